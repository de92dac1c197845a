//! Finding the images of a split and their labels.
//!
//! Two layouts are read, from a folder or from a tar archive (see the `archive`
//! module):
//! - a tree, `<wnid>/<file>` (ImageNet's train layout, and val once sorted into
//!   class folders): the top-level folder names are the labels; files in folders
//!   below a class folder belong to that class (as torchvision's `ImageFolder`);
//! - a flat folder plus labels: Kaggle's `LOC_val_solution.csv`
//!   (`ImageId,PredictionString`, the wnid first in the prediction string), plain
//!   `filename wnid` lines (the file name with or without its extension), or the
//!   ILSVRC2012 devkit (see [`crate::devkit`]).
//!
//! Class indices are the sorted wnids, or copied from an existing dataset's manifest
//! (`classes`) so val labels agree with train. Class names come from
//! the devkit's `meta.mat` (`words`), else `LOC_synset_mapping.txt` (`wnid name`
//! lines) in or beside the input.
//!
//! Every entry found is accounted for: an image (with its label), a reject (a file
//! that should have been an image but cannot be: a special file, a broken link, no
//! label, ...), or ignored with the reason (hidden files, files outside the class
//! folders, the build's own output folder). Images are in the order of their paths'
//! bytes, which is the build's record order whatever the source.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sv_core::ClassInfo;

use crate::read::{io_words, kind_of, read_text};
use crate::{BuildError, Reject};

/// One input image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputImage {
    /// Path relative to the input folder or archive, as stored (on Unix a file name
    /// is bytes, not necessarily UTF-8).
    pub path: PathBuf,
    /// `path` for people and reports: `/`-separated, bytes that are not UTF-8
    /// written `\xNN`.
    pub rel: String,
    /// Class index.
    pub label: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_s: i64,
    /// Nanoseconds past `mtime_s` (0 for archive members).
    pub mtime_ns: u32,
    /// For an archive input, the offset of the member's bytes in the archive.
    pub offset: Option<u64>,
}

/// An entry found in the input that is deliberately not used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignored {
    /// Path relative to the input.
    pub path: String,
    /// Why it is not read.
    pub reason: String,
}

/// What [`discover`] found.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The classes, in label order.
    pub classes: Vec<ClassInfo>,
    /// The images, in build order (by the bytes of their paths).
    pub images: Vec<InputImage>,
    /// Entries that cannot be used, known before decoding, by path.
    pub rejects: Vec<Reject>,
    /// Entries not read on purpose, by path.
    pub ignored: Vec<Ignored>,
    /// The labels file that was used, if any.
    pub labels_file: Option<PathBuf>,
    /// The archive the images are read from, when the input is one.
    pub archive: Option<PathBuf>,
    /// The WebDataset tars or parquet files read, when the input is those.
    pub hub: Option<std::sync::Arc<crate::hub::HubFiles>>,
}

/// Where to look.
#[derive(Clone, Debug, Default)]
pub struct InputSpec {
    /// The split's folder, or an archive (`.tar`) holding it.
    pub input: PathBuf,
    /// A labels file for a flat folder; looked for beside the folder when absent.
    pub labels: Option<PathBuf>,
    /// The ILSVRC2012 devkit: its archive, its folder, or its `meta.mat` and
    /// validation ground-truth file given separately. Names the classes (`words`) and
    /// labels a flat val input.
    pub devkit: Vec<PathBuf>,
    /// Class list to use instead of the sorted wnids found.
    pub classes: Option<Vec<ClassInfo>>,
    /// WebDataset tars or parquet files: more inputs, the format, where labels and
    /// class names are (see [`crate::hub`]).
    pub hub: crate::hub::HubOptions,
}

/// Names of the labels files looked for beside a flat folder.
pub(crate) const LABEL_FILES: &[&str] = &["LOC_val_solution.csv", "val_labels.txt"];
/// ImageNet's class-name file.
pub(crate) const SYNSET_MAPPING: &str = "LOC_synset_mapping.txt";

/// A file found while listing the input.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    /// Relative path, as stored.
    pub path: PathBuf,
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: u32,
    pub offset: Option<u64>,
}

/// Everything found in an input, before labels are given out.
#[derive(Clone, Debug, Default)]
pub(crate) struct Listing {
    /// Top-level folders (class folders of a tree), sorted.
    pub dirs: Vec<OsString>,
    /// Regular files: at the top level, and (for a tree) at any depth below it.
    pub files: Vec<Found>,
    pub rejects: Vec<Reject>,
    pub ignored: Vec<Ignored>,
}

/// `path` for people: `/`-separated, non-UTF-8 bytes as `\xNN`.
pub fn display_path(path: &Path) -> String {
    let mut out = String::new();
    for (i, c) in path.components().enumerate() {
        if i > 0 {
            out.push('/');
        }
        escape_into(c.as_os_str(), &mut out);
    }
    out
}

fn escape_into(s: &OsStr, out: &mut String) {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        for chunk in s.as_bytes().utf8_chunks() {
            out.push_str(chunk.valid());
            for b in chunk.invalid() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    #[cfg(not(unix))]
    out.push_str(&s.to_string_lossy());
}

/// A path's bytes, for ordering and fingerprints.
pub(crate) fn path_bytes(path: &Path) -> std::borrow::Cow<'_, [u8]> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        std::borrow::Cow::Borrowed(path.as_os_str().as_bytes())
    }
    #[cfg(not(unix))]
    std::borrow::Cow::Owned(path.to_string_lossy().into_owned().into_bytes())
}

fn is_hidden(name: &OsStr) -> bool {
    path_bytes(Path::new(name)).first() == Some(&b'.')
}

/// List the split's images and labels. `output`, the build's own folder, is never
/// read as input, even when it lies inside the input folder.
pub fn discover(spec: &InputSpec, output: Option<&Path>) -> Result<Inputs, BuildError> {
    if let Some(format) = crate::hub::detect(spec, &spec.hub)? {
        return crate::hub::discover(spec, &spec.hub, format).map(Inputs::from);
    }
    let input = &spec.input;
    let meta = std::fs::metadata(input).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            BuildError::Input(format!("the input {} does not exist", input.display()))
        }
        _ => BuildError::io(input, "read")(e),
    })?;
    let flat_wanted = spec.labels.is_some();
    let (listing, archive) = if meta.is_dir() {
        let exclude = output.and_then(|o| std::fs::metadata(o).ok());
        (list_folder(input, exclude.as_ref(), flat_wanted)?, None)
    } else if meta.is_file() {
        (crate::archive::list(input)?, Some(input.clone()))
    } else {
        return Err(BuildError::Input(format!(
            "the input {} is {}, not a folder or a tar archive",
            input.display(),
            kind_of(meta.file_type())
        )));
    };
    // Labels and class names are looked for in the input folder and beside it (beside
    // an archive).
    let near: Vec<&Path> = match archive {
        Some(_) => input.parent().into_iter().collect(),
        None => [Some(input.as_path()), input.parent()]
            .into_iter()
            .flatten()
            .collect(),
    };
    let devkit = crate::devkit::Devkit::load(&spec.devkit)?;
    let names = match &devkit {
        Some(d) => d.names(),
        None => read_synset_mapping(&near)?,
    };
    let mut inputs = if !listing.dirs.is_empty() && !flat_wanted {
        tree(listing, spec, &names)
    } else {
        flat(listing, spec, &near, devkit.as_ref(), &names)?
    };
    inputs.archive = archive;
    Ok(inputs)
}

/// Walk a folder: the top level, and below the top-level folders unless the input is
/// flat (`flat_wanted`, or no folders at the top).
fn list_folder(
    root: &Path,
    exclude: Option<&std::fs::Metadata>,
    flat_wanted: bool,
) -> Result<Listing, BuildError> {
    let mut listing = Listing::default();
    let mut walker = Walker {
        root,
        exclude,
        listing: &mut listing,
        ancestors: Vec::new(),
    };
    let top = walker
        .entries(Path::new(""))
        .map_err(BuildError::io(root, "list"))?;
    let mut dirs = Vec::new();
    for (rel, meta) in top {
        match meta {
            Some(m) if m.is_dir() => dirs.push((rel, m)),
            Some(m) => walker.file(rel, &m),
            None => {}
        }
    }
    let tree = !dirs.is_empty() && !flat_wanted;
    for (rel, meta) in dirs {
        if tree {
            walker.listing.dirs.push(rel.clone().into_os_string());
            walker.descend(&rel, &meta);
        } else {
            walker.listing.ignored.push(Ignored {
                path: display_path(&rel),
                reason: "a folder inside a flat (labelled) input folder: its files are not read"
                    .into(),
            });
        }
    }
    Ok(listing)
}

struct Walker<'a> {
    root: &'a Path,
    exclude: Option<&'a std::fs::Metadata>,
    listing: &'a mut Listing,
    /// (device, inode) of the folders being walked, to catch link loops.
    ancestors: Vec<(u64, u64)>,
}

impl Walker<'_> {
    /// The entries of folder `rel`, sorted by name, with their metadata (following
    /// links); `None` for entries already recorded as ignored or rejected.
    #[allow(clippy::type_complexity)]
    fn entries(
        &mut self,
        rel: &Path,
    ) -> std::io::Result<Vec<(PathBuf, Option<std::fs::Metadata>)>> {
        let dir = self.root.join(rel);
        let mut names: Vec<OsString> = std::fs::read_dir(&dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let rel = rel.join(&name);
            let path = self.root.join(&rel);
            if is_hidden(&name) {
                let what = match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => "a hidden folder (its name starts with a dot): not read",
                    _ => "a hidden file (its name starts with a dot)",
                };
                self.ignore(&rel, what);
                out.push((rel, None));
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() && self.is_output(&m) => {
                    self.ignore(&rel, "the build's own output folder");
                    out.push((rel, None));
                }
                Ok(m) => out.push((rel, Some(m))),
                Err(e) => {
                    let reason = unreadable(&path, &e);
                    self.reject(&rel, reason);
                    out.push((rel, None));
                }
            }
        }
        Ok(out)
    }

    fn descend(&mut self, rel: &Path, meta: &std::fs::Metadata) {
        let id = file_id(meta);
        if self.ancestors.contains(&id) {
            self.reject(
                rel,
                "a folder loop: this folder is one of its own parents (through a symbolic link)"
                    .into(),
            );
            return;
        }
        self.ancestors.push(id);
        match self.entries(rel) {
            Ok(entries) => {
                for (child, m) in entries {
                    match m {
                        Some(m) if m.is_dir() => self.descend(&child, &m),
                        Some(m) => self.file(child, &m),
                        None => {}
                    }
                }
            }
            Err(e) => self.reject(
                rel,
                format!("a folder that cannot be listed: {}", io_words(&e)),
            ),
        }
        self.ancestors.pop();
    }

    fn file(&mut self, rel: PathBuf, meta: &std::fs::Metadata) {
        if !meta.is_file() {
            let reason = format!("not a regular file: {}", kind_of(meta.file_type()));
            self.reject(&rel, reason);
            return;
        }
        let (mtime_s, mtime_ns) = mtime(meta);
        self.listing.files.push(Found {
            path: rel,
            size: meta.len(),
            mtime_s,
            mtime_ns,
            offset: None,
        });
    }

    fn is_output(&self, meta: &std::fs::Metadata) -> bool {
        self.exclude.is_some_and(|o| file_id(o) == file_id(meta))
    }

    fn ignore(&mut self, rel: &Path, reason: &str) {
        self.listing.ignored.push(Ignored {
            path: display_path(rel),
            reason: reason.into(),
        });
    }

    fn reject(&mut self, rel: &Path, reason: String) {
        self.listing.rejects.push(Reject {
            path: display_path(rel),
            reason,
        });
    }
}

/// Why `path` (whose metadata could not be read through links) cannot be used.
fn unreadable(path: &Path, e: &std::io::Error) -> String {
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
    if link && e.kind() == std::io::ErrorKind::NotFound {
        let target = std::fs::read_link(path)
            .map(|t| display_path(&t))
            .unwrap_or_else(|_| "?".into());
        return format!("a broken symbolic link: its target {target} does not exist");
    }
    #[cfg(unix)]
    if link && e.raw_os_error() == Some(libc::ELOOP) {
        return "a symbolic link loop".into();
    }
    format!("cannot be read: {}", io_words(e))
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_m: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// A file's modification time (seconds, nanoseconds), as listings record it.
pub(crate) fn mtime(m: &std::fs::Metadata) -> (i64, u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (m.mtime(), m.mtime_nsec().clamp(0, 999_999_999) as u32)
    }
    #[cfg(not(unix))]
    match m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    {
        Some(d) => (d.as_secs() as i64, d.subsec_nanos()),
        None => (0, 0),
    }
}

fn image(f: Found, label: u32) -> InputImage {
    InputImage {
        rel: display_path(&f.path),
        path: f.path,
        label,
        size: f.size,
        mtime_s: f.mtime_s,
        mtime_ns: f.mtime_ns,
        offset: f.offset,
    }
}

/// The class-folder layout: labels from the top-level folder of each file.
fn tree(listing: Listing, spec: &InputSpec, names: &HashMap<String, String>) -> Inputs {
    let Listing {
        dirs,
        files,
        mut rejects,
        mut ignored,
    } = listing;
    let wnids: Vec<&str> = dirs.iter().filter_map(|d| d.to_str()).collect();
    let classes = match &spec.classes {
        Some(c) => c.clone(),
        None => wnids.iter().map(|w| class_info(w, names)).collect(),
    };
    let index = class_index(&classes);
    let mut images = Vec::new();
    for f in files {
        let mut parts = f.path.components();
        let top = parts.next().map(|c| c.as_os_str().to_owned());
        let rel = display_path(&f.path);
        if parts.next().is_none() {
            ignored.push(Ignored {
                reason: top_level_reason(&rel).into(),
                path: rel,
            });
            continue;
        }
        let Some(wnid) = top.as_deref().and_then(OsStr::to_str) else {
            rejects.push(Reject {
                path: rel,
                reason: "its class folder's name is not valid UTF-8, so it cannot be a wnid".into(),
            });
            continue;
        };
        match index.get(wnid) {
            Some(&label) => images.push(image(f, label)),
            None => rejects.push(Reject {
                path: rel,
                reason: format!("class folder {wnid} is not in the class list"),
            }),
        }
    }
    finish(classes, images, rejects, ignored, None)
}

fn top_level_reason(name: &str) -> &'static str {
    if name == SYNSET_MAPPING {
        "the class-name file"
    } else if LABEL_FILES.contains(&name) {
        "a labels file (not used: the input has class folders)"
    } else {
        "not inside a class folder (a class-folder tree holds its images in <wnid>/ folders)"
    }
}

fn finish(
    classes: Vec<ClassInfo>,
    mut images: Vec<InputImage>,
    mut rejects: Vec<Reject>,
    mut ignored: Vec<Ignored>,
    labels_file: Option<PathBuf>,
) -> Inputs {
    images.sort_by(|a, b| path_bytes(&a.path).cmp(&path_bytes(&b.path)));
    rejects.sort_by(|a, b| a.path.cmp(&b.path));
    ignored.sort_by(|a, b| a.path.cmp(&b.path));
    Inputs {
        classes,
        images,
        rejects,
        ignored,
        labels_file,
        archive: None,
        hub: None,
    }
}

/// The flat layout: labels from a labels file or the devkit, by file name.
fn flat(
    listing: Listing,
    spec: &InputSpec,
    near: &[&Path],
    devkit: Option<&crate::devkit::Devkit>,
    names: &HashMap<String, String>,
) -> Result<Inputs, BuildError> {
    let Listing {
        dirs: _,
        files,
        mut rejects,
        mut ignored,
    } = listing;
    let (labels, source, labels_file) = match (&spec.labels, devkit) {
        (Some(p), _) => (read_labels(p)?, p.display().to_string(), Some(p.clone())),
        (None, Some(d)) if d.has_ground_truth() => {
            let names = files
                .iter()
                .filter(|f| f.path.components().count() == 1)
                .filter_map(|f| f.path.to_str());
            let (labels, source) = d.val_labels(names)?;
            (labels, source, None)
        }
        // A devkit was given to label this flat input, and it cannot: say what it
        // lacks, never take labels from a file that happens to lie beside the input.
        (None, Some(_)) => {
            return Err(BuildError::Input(format!(
                "{} holds no class folders, so its labels must come from the devkit, and \
                 the devkit ({}) holds no data/{}: give the whole devkit \
                 (ILSVRC2012_devkit_t12.tar.gz or its folder), or the ground-truth file as \
                 a second --devkit",
                spec.input.display(),
                spec.devkit
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::devkit::GROUND_TRUTH
            )));
        }
        (None, _) => {
            let p = find_labels_file(near).ok_or_else(|| {
                BuildError::Input(format!(
                    "{} holds no class folders, and no labels were given (--labels or \
                     --devkit) or found beside it ({})",
                    spec.input.display(),
                    LABEL_FILES.join(", ")
                ))
            })?;
            (read_labels(&p)?, p.display().to_string(), Some(p))
        }
    };
    let classes = match &spec.classes {
        Some(c) => c.clone(),
        None => {
            let wnids: BTreeSet<&str> = labels.values().map(String::as_str).collect();
            wnids.into_iter().map(|w| class_info(w, names)).collect()
        }
    };
    if classes.is_empty() {
        return Err(BuildError::Input(format!("{source}: no labels found")));
    }
    let index = class_index(&classes);
    let mut images = Vec::new();
    for f in files {
        let rel = display_path(&f.path);
        if f.path.components().count() > 1 {
            ignored.push(Ignored {
                path: rel,
                reason: "inside a folder of a flat (labelled) input: not read".into(),
            });
            continue;
        }
        if LABEL_FILES.contains(&rel.as_str()) || rel == SYNSET_MAPPING {
            ignored.push(Ignored {
                path: rel,
                reason: "a labels or class-name file".into(),
            });
            continue;
        }
        let stem = rel.rsplit_once('.').map_or(rel.as_str(), |(s, _)| s);
        let wnid = labels.get(rel.as_str()).or_else(|| labels.get(stem));
        match wnid.map(|w| (w, index.get(w.as_str()))) {
            Some((_, Some(&label))) => images.push(image(f, label)),
            Some((w, None)) => rejects.push(Reject {
                reason: format!("class {w} is not in the class list"),
                path: rel,
            }),
            None => rejects.push(Reject {
                reason: format!("no label in {source}"),
                path: rel,
            }),
        }
    }
    Ok(finish(classes, images, rejects, ignored, labels_file))
}

fn find_labels_file(near: &[&Path]) -> Option<PathBuf> {
    LABEL_FILES.iter().find_map(|name| {
        near.iter()
            .map(|d| d.join(name))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
    })
}

fn class_info(wnid: &str, names: &HashMap<String, String>) -> ClassInfo {
    ClassInfo {
        wnid: wnid.to_string(),
        name: names.get(wnid).cloned().unwrap_or_else(|| wnid.to_string()),
    }
}

fn class_index(classes: &[ClassInfo]) -> HashMap<&str, u32> {
    classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.wnid.as_str(), i as u32))
        .collect()
}

/// `wnid -> name` from `LOC_synset_mapping.txt` in the first of `near` that has one.
fn read_synset_mapping(near: &[&Path]) -> Result<HashMap<String, String>, BuildError> {
    let Some(path) = near
        .iter()
        .map(|d| d.join(SYNSET_MAPPING))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()))
    else {
        return Ok(HashMap::new());
    };
    let text = read_text(&path)?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (wnid, name) = l.split_once(char::is_whitespace)?;
            Some((wnid.to_string(), name.trim().to_string()))
        })
        .collect())
}

/// Read a labels file: `ImageId,PredictionString` CSV, or `filename wnid` lines.
/// Keys are as written (an ImageId, or a file name with or without extension).
pub fn read_labels(path: &Path) -> Result<HashMap<String, String>, BuildError> {
    let text = read_text(path)?;
    let mut out = HashMap::new();
    let mut lines = text.lines().enumerate().peekable();
    let csv = lines
        .peek()
        .is_some_and(|(_, l)| l.trim_start_matches('\u{feff}').starts_with("ImageId,"));
    if csv {
        lines.next();
    }
    for (n, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, wnid) = if csv {
            let (id, pred) = line
                .split_once(',')
                .ok_or_else(|| bad_line(path, n, line))?;
            let wnid = pred
                .split_whitespace()
                .next()
                .ok_or_else(|| bad_line(path, n, line))?;
            (id.trim(), wnid)
        } else {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(k), Some(w)) => (k, w),
                _ => return Err(bad_line(path, n, line)),
            }
        };
        if let Some(old) = out.insert(key.to_string(), wnid.to_string())
            && old != wnid
        {
            return Err(BuildError::Input(format!(
                "{}: line {}: {key} is labelled both {old} and {wnid}",
                path.display(),
                n + 1
            )));
        }
    }
    Ok(out)
}

fn bad_line(path: &Path, n: usize, line: &str) -> BuildError {
    let shown: String = line.chars().take(80).collect();
    BuildError::Input(format!(
        "{}: line {}: expected `ImageId,wnid ...` or `filename wnid`, found `{shown}`",
        path.display(),
        n + 1
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn spec(input: PathBuf) -> InputSpec {
        InputSpec {
            input,
            ..Default::default()
        }
    }

    #[test]
    fn tree_layout_sorted_with_names() {
        let d = tempfile::tempdir().unwrap();
        let train = d.path().join("train");
        touch(&train.join("n2/b.JPEG"));
        touch(&train.join("n2/a.JPEG"));
        touch(&train.join("n1/z.JPEG"));
        std::fs::write(d.path().join(SYNSET_MAPPING), "n1 one, uno\nn2 two\n").unwrap();
        let got = discover(&spec(train), None).unwrap();
        assert_eq!(got.classes[0].name, "one, uno");
        let rels: Vec<_> = got
            .images
            .iter()
            .map(|i| (i.rel.as_str(), i.label))
            .collect();
        assert_eq!(rels, [("n1/z.JPEG", 0), ("n2/a.JPEG", 1), ("n2/b.JPEG", 1)]);
        assert_eq!(got.images[0].size, 1);
    }

    #[test]
    fn flat_layout_with_kaggle_csv_and_class_list() {
        let d = tempfile::tempdir().unwrap();
        let val = d.path().join("val");
        touch(&val.join("v_1.JPEG"));
        touch(&val.join("v_2.JPEG"));
        touch(&val.join("v_3.JPEG"));
        touch(&val.join("v_4.JPEG"));
        std::fs::write(
            d.path().join("LOC_val_solution.csv"),
            "ImageId,PredictionString\nv_1,n2 1 2 3 4 n2 5 6 7 8\nv_2,n1 0 0 1 1\nv_4,n9 0 0 1 1\n",
        )
        .unwrap();
        let classes = ["n1", "n2", "n3"]
            .iter()
            .map(|w| ClassInfo {
                wnid: w.to_string(),
                name: w.to_string(),
            })
            .collect();
        let got = discover(
            &InputSpec {
                input: val,
                classes: Some(classes),
                ..Default::default()
            },
            None,
        )
        .unwrap();
        let rels: Vec<_> = got
            .images
            .iter()
            .map(|i| (i.rel.as_str(), i.label))
            .collect();
        assert_eq!(rels, [("v_1.JPEG", 1), ("v_2.JPEG", 0)]);
        assert_eq!(got.rejects.len(), 2);
        assert!(got.rejects[0].reason.contains("no label"));
        assert!(
            got.rejects[1]
                .reason
                .contains("n9 is not in the class list")
        );
    }

    #[test]
    fn plain_labels_and_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.txt");
        std::fs::write(&p, "a.JPEG n1\nb n2\n").unwrap();
        let l = read_labels(&p).unwrap();
        assert_eq!(l["a.JPEG"], "n1");
        std::fs::write(&p, "a.JPEG\n").unwrap();
        let e = read_labels(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        std::fs::write(&p, "a n1\na n2\n").unwrap();
        assert!(read_labels(&p).unwrap_err().to_string().contains("both"));
    }

    #[test]
    fn flat_without_labels_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        touch(&d.path().join("x/a.JPEG"));
        let e = discover(&spec(d.path().join("x")), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--labels"), "{e}");
    }

    #[test]
    fn escapes_non_utf8_bytes() {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let p = Path::new(OsStr::from_bytes(b"n1/caf\xe9.JPEG"));
            assert_eq!(display_path(p), "n1/caf\\xe9.JPEG");
        }
    }
}
