#!/usr/bin/env bash
# vendor/zune-jpeg is crates.io's zune-jpeg with SuperVision's changes applied; the
# changes live in vendor/zune-jpeg.patch (a unified diff against the pristine crate,
# vendor/zune-jpeg/PATCHED.md included) and this script is the one way to write the
# folder from them.
#
#   tools/vendor-zune-jpeg.sh VERSION    fetch zune-jpeg VERSION, apply the patch, replace
#                                        vendor/zune-jpeg, pin the workspace to =VERSION
#   tools/vendor-zune-jpeg.sh --check    rebuild the vendored version in a temporary
#                                        folder; exit 1 unless it equals vendor/zune-jpeg
#                                        byte for byte and the workspace pins it (test.sh)
#   tools/vendor-zune-jpeg.sh --save-patch
#                                        rewrite vendor/zune-jpeg.patch from what
#                                        vendor/zune-jpeg now holds (after editing it)
#
# Upstream comes through cargo: `cargo vendor` of a throwaway package that depends on
# zune-jpeg =VERSION, so it is the registry's checksummed .crate (from cargo's cache when
# there, else downloaded). cargo's bookkeeping files (.cargo-checksum.json,
# .cargo_vcs_info.json, Cargo.lock, Cargo.toml.orig) are left out. docs/development.md
# walks through an update.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENDOR=vendor/zune-jpeg
PATCH=vendor/zune-jpeg.patch

die() {
  echo "error: $*" >&2
  exit 1
}

usage() {
  sed -n '7,14s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# The version vendor/zune-jpeg holds (its Cargo.toml, as published).
vendored_version() {
  [ -f "$VENDOR/Cargo.toml" ] || die "$VENDOR/Cargo.toml not found"
  sed -n 's/^version = "\(.*\)"$/\1/p' "$VENDOR/Cargo.toml" | head -n 1
}

# fetch VERSION DEST: the pristine crate as published on crates.io, into DEST.
fetch() {
  local version=$1 dest=$2 pkg="$TMP/fetch-$1"
  mkdir -p "$pkg/src"
  : >"$pkg/src/lib.rs"
  cat >"$pkg/Cargo.toml" <<EOF
[package]
name = "fetch-zune-jpeg"
version = "0.0.0"
edition = "2021"

[dependencies]
zune-jpeg = "=$version"

[workspace]
EOF
  (cd "$pkg" && cargo vendor --quiet --versioned-dirs "$pkg/vendor" >/dev/null) ||
    die "could not fetch zune-jpeg $version through cargo (is it a published version? is crates.io or cargo's cache reachable?)"
  [ -d "$pkg/vendor/zune-jpeg-$version" ] || die "cargo vendor gave no zune-jpeg-$version"
  mv "$pkg/vendor/zune-jpeg-$version" "$dest"
  rm -f "$dest/.cargo-checksum.json" "$dest/.cargo_vcs_info.json" "$dest/Cargo.lock" "$dest/Cargo.toml.orig"
}

# apply DIR [--reject]: vendor/zune-jpeg.patch onto DIR. GIT_CEILING_DIRECTORIES keeps
# git apply from finding a repository around DIR (it would then patch that instead).
apply_patch() {
  local dir=$1
  shift
  (cd "$dir" && GIT_CEILING_DIRECTORIES="$(dirname "$dir")" git apply -p1 --whitespace=nowarn "$@" "$ROOT/$PATCH")
}

# build VERSION DEST: pristine VERSION + the patch; exit 1 when a hunk does not apply.
build() {
  fetch "$1" "$2"
  apply_patch "$2" || die "$PATCH does not apply to zune-jpeg $1"
}

# The workspace's zune-jpeg requirement must name exactly the vendored version.
check_pin() {
  local version=$1
  grep -qx "zune-jpeg = \"=$version\"" Cargo.toml ||
    die "Cargo.toml does not pin zune-jpeg = \"=$version\" (the version in $VENDOR)"
}

check() {
  local version
  version=$(vendored_version)
  check_pin "$version"
  build "$version" "$TMP/expected"
  if ! diff -r "$TMP/expected" "$VENDOR" >"$TMP/diff"; then
    sed -e "s#$TMP/expected#(zune-jpeg $version + patch)#g" "$TMP/diff" | head -n 40 >&2
    die "$VENDOR differs from zune-jpeg $version with $PATCH applied: edit the folder and run $0 --save-patch, or rewrite it with $0 $version"
  fi
  echo "ok: $VENDOR is zune-jpeg $version with $PATCH applied, byte for byte"
}

save_patch() {
  local version status=0
  version=$(vendored_version)
  if find "$VENDOR" -name '*.rej' -o -name '*.orig' | grep -q .; then
    die "$VENDOR still holds .rej/.orig files: resolve them and delete them first"
  fi
  fetch "$version" "$TMP/a"
  cp -R "$VENDOR" "$TMP/b"
  # Paths a/... and b/... (as git writes them), full hashes and no user diff settings,
  # so that the same folder always gives the same patch.
  (cd "$TMP" && git -c core.quotepath=false -c diff.noprefix=false -c diff.mnemonicprefix=false \
    diff --no-index --no-prefix --no-color --no-ext-diff --no-renames --full-index --binary \
    a b >"$TMP/patch") || status=$?
  [ "$status" -le 1 ] || die "git diff failed"
  [ -s "$TMP/patch" ] || die "$VENDOR is the pristine zune-jpeg $version: no patch to write"
  cp "$TMP/patch" "$PATCH"
  echo "wrote $PATCH ($(grep -c '^diff --git' "$PATCH") files) against zune-jpeg $version"
}

update() {
  local version=$1 current
  [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "VERSION must look like 0.5.15, not '$version'"
  [ -f "$PATCH" ] || die "$PATCH not found"
  # Never lose edits made to the folder but not yet saved in the patch.
  current=$(vendored_version)
  build "$current" "$TMP/current"
  diff -rq "$TMP/current" "$VENDOR" >/dev/null ||
    die "$VENDOR has changes that $PATCH does not hold: run $0 --save-patch first"

  fetch "$version" "$TMP/new"
  local rejected=0
  if ! apply_patch "$TMP/new" --check 2>/dev/null; then
    rejected=1
    apply_patch "$TMP/new" --reject 2>"$TMP/apply.log" || true
  else
    apply_patch "$TMP/new"
  fi
  rm -rf "$VENDOR"
  cp -R "$TMP/new" "$VENDOR"
  sed -i.bak "s/^zune-jpeg = \".*\"$/zune-jpeg = \"=$version\"/" Cargo.toml && rm -f Cargo.toml.bak
  check_pin "$version"
  if [ "$rejected" = 1 ]; then
    cat "$TMP/apply.log" >&2
    echo "$VENDOR: zune-jpeg $version with the hunks that apply; the others are in *.rej files." >&2
    echo "Resolve them, delete the .rej files, then run: $0 --save-patch && $0 --check" >&2
    exit 1
  fi
  echo "wrote $VENDOR: zune-jpeg $version with $PATCH; pinned zune-jpeg = \"=$version\"."
  echo "Next: cargo update -p zune-jpeg, then cargo test -p sv-image and the checks in docs/development.md."
}

case "${1:-}" in
  --check) [ $# -eq 1 ] || usage; check ;;
  --save-patch) [ $# -eq 1 ] || usage; save_patch ;;
  -h | --help | "") usage ;;
  -*) usage ;;
  *) [ $# -eq 1 ] || usage; update "$1" ;;
esac
