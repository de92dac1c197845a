#!/usr/bin/env bash
# libtorch for the `train` feature of SuperVision, made once and reused.
#
# Creates (the first time only) a Python virtual environment with torch==2.11.0 (the
# version tch 0.24 is built for) from the package registry, under
#   ${SUPERVISION_CACHE:-~/.cache/supervision}/venv-torch-2.11.0
# and sets what the build needs: LIBTORCH_USE_PYTORCH=1 and the venv's python first on
# PATH (torch-sys asks that python where libtorch is). The `supervision-torch` binary
# records libtorch's directory as an rpath (crates/sv-cli/build.rs), so running it needs
# nothing.
#
# It also adds (to a venv made before, too) two header-only wheels that sv-c10's C++
# shim needs for ProcessGroupNCCL and that torch's CUDA runtime wheels lack:
# nvidia-cuda-crt (crt/host_config.h) and nvidia-cuda-cccl (nv/target), at the versions
# matching the wheel's CUDA 13.0 runtime, with --no-deps (headers only).
#
# Use:
#   source tools/setup-torch.sh          # in bash: make/reuse the venv, export the env
#   eval "$(tools/setup-torch.sh --env)" # same, from any POSIX shell
#   tools/setup-torch.sh --check         # exit 0 iff the venv exists and imports torch
#   tools/setup-torch.sh --lib-dir       # print libtorch's lib directory
# Set SUPERVISION_TORCH_PYTHON to a python that already has torch 2.11.0 to skip the venv
# (the header wheels are then that python's business: without them sv-c10 builds
# without NCCL and says so).

_sv_torch_version="2.11.0"
_sv_header_wheels="nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85"
_sv_cache="${SUPERVISION_CACHE:-$HOME/.cache/supervision}"
_sv_venv="$_sv_cache/venv-torch-$_sv_torch_version"

_sv_log() { printf 'setup-torch: %s\n' "$*" >&2; }

_sv_python() {
    if [ -n "${SUPERVISION_TORCH_PYTHON:-}" ]; then
        printf '%s\n' "$SUPERVISION_TORCH_PYTHON"
    else
        printf '%s\n' "$_sv_venv/bin/python"
    fi
}

_sv_torch_ok() {
    local py
    py="$(_sv_python)"
    [ -x "$py" ] && "$py" -c "import sys, torch; sys.exit(0 if torch.__version__.split('+')[0] == '$_sv_torch_version' else 1)" >/dev/null 2>&1
}

# The CUDA headers sv-c10's NCCL part compiles against (see the header wheels above).
_sv_headers_ok() {
    local inc
    inc="$("$(_sv_python)" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)/nvidia/cu13/include" || return 1
    [ -f "$inc/crt/host_config.h" ] && [ -d "$inc/nv" ]
}

_sv_install_headers() {
    "$_sv_venv/bin/python" -m pip install --quiet --no-deps $_sv_header_wheels >>"$_sv_cache/pip.log" 2>&1 || {
        _sv_log "pip install $_sv_header_wheels failed; see $_sv_cache/pip.log"
        return 1
    }
}

_sv_ensure() {
    if _sv_torch_ok; then
        if [ -z "${SUPERVISION_TORCH_PYTHON:-}" ] && ! _sv_headers_ok; then
            (
                if command -v flock >/dev/null 2>&1; then
                    exec 9>"$_sv_cache/.venv-torch.lock"
                    flock 9
                fi
                _sv_headers_ok && exit 0
                _sv_log "adding the CUDA header wheels to $_sv_venv ($_sv_header_wheels)"
                _sv_install_headers
            ) || return 1
        fi
        return 0
    fi
    if [ -n "${SUPERVISION_TORCH_PYTHON:-}" ]; then
        _sv_log "SUPERVISION_TORCH_PYTHON=$SUPERVISION_TORCH_PYTHON has no torch $_sv_torch_version"
        return 1
    fi
    local base="${PYTHON:-python3}"
    command -v "$base" >/dev/null 2>&1 || { _sv_log "no $base found: install Python 3.9+ with venv"; return 1; }
    mkdir -p "$_sv_cache" || return 1
    # One installer at a time: a second caller waits here, then finds the venv ready.
    (
        if command -v flock >/dev/null 2>&1; then
            exec 9>"$_sv_cache/.venv-torch.lock"
            flock 9
        fi
        if _sv_torch_ok; then exit 0; fi
        _sv_log "creating $_sv_venv with torch==$_sv_torch_version (about 5 GB, a few minutes; log: $_sv_cache/pip.log)"
        rm -rf "$_sv_venv"
        "$base" -m venv "$_sv_venv" || exit 1
        "$_sv_venv/bin/python" -m pip install --quiet --upgrade pip >>"$_sv_cache/pip.log" 2>&1
        "$_sv_venv/bin/python" -m pip install "torch==$_sv_torch_version" numpy pillow >>"$_sv_cache/pip.log" 2>&1 || {
            _sv_log "pip install failed; see $_sv_cache/pip.log"
            exit 1
        }
        _sv_install_headers || exit 1
    ) || return 1
    _sv_torch_ok || { _sv_log "torch $_sv_torch_version still not importable from $(_sv_python)"; return 1; }
}

_sv_lib_dir() {
    "$(_sv_python)" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'
}

_sv_env_lines() {
    local bindir
    bindir="$(dirname "$(_sv_python)")"
    printf 'export LIBTORCH_USE_PYTORCH=1\n'
    printf 'export PATH="%s:$PATH"\n' "$bindir"
    printf 'export SUPERVISION_TORCH_LIB="%s"\n' "$(_sv_lib_dir)"
}

if [ "${BASH_SOURCE[0]:-$0}" != "$0" ]; then
    # Sourced: export into the caller's shell, never exit it.
    if _sv_ensure; then
        eval "$(_sv_env_lines)"
        _sv_log "torch $_sv_torch_version from $(_sv_python); LIBTORCH_USE_PYTORCH=1"
    else
        _sv_log "libtorch is not available; build without the train feature"
        return 1 2>/dev/null
    fi
else
    set -u
    case "${1:-}" in
        --env) _sv_ensure && _sv_env_lines ;;
        --check) _sv_torch_ok ;;
        --lib-dir) _sv_ensure && _sv_lib_dir ;;
        "") _sv_ensure && _sv_log "ready: $(_sv_python) ($(_sv_lib_dir))" ;;
        *) _sv_log "unknown option $1 (--env, --check, --lib-dir)"; exit 2 ;;
    esac
fi
