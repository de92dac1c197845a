//! ImageNet as the Hugging Face hub shares it: WebDataset tars
//! (`imagenet1k-train-{0000..1023}.tar`: each sample a `KEY.jpg` with `KEY.cls`, the
//! class index as text, often `KEY.json`) and parquet files (rows holding an `image`
//! struct `{bytes, path}` and an integer `label`, the class names in the
//! `huggingface` schema metadata).
//!
//! This is an input layer only: it lists the samples, in a canonical order (the files
//! in the order given or expanded, then each file's members or rows in stored order),
//! as [`crate::Inputs`], and reads one sample's image bytes at a time ([`Reader`]).
//! Decoding, resizing, writing, resuming, `--part` and merging are the build's, shared
//! with the folder and ILSVRC inputs; so the same images in the same order give
//! byte-identical shards from any of them.
//!
//! Nothing is held whole: a tar is indexed by its headers (member data is seeked
//! over; only the small label members are read), and its images are read with
//! positioned reads; a parquet file is read a page at a time, its image column by one
//! cursor that moves forward through the row groups.
//!
//! Bad input: a file that is not what it should be, or that is truncated, is an error
//! naming it before anything is written; a sample that cannot be used (no image, no
//! label, a label that is not a number or not in the class list, a duplicate key, a
//! null, a page that cannot be decoded) is a reject naming the tar member or the
//! parquet row.

pub mod braces;
mod pq;
mod wds;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sv_core::ClassInfo;

use crate::inputs::{InputImage, InputSpec, display_path};
use crate::read::{MAX_INPUT_BYTES, io_words, open_regular};
use crate::{BuildError, Reject};

/// What `--input` holds, when the content alone should not decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// A folder of images (class-folder tree or flat).
    Folder,
    /// A tar of images: ILSVRC2012's tars, or a tar of a tree or flat folder.
    Tar,
    /// WebDataset tars: samples of `KEY.ext` members.
    Wds,
    /// Parquet files with an image column and a label column.
    Parquet,
}

impl std::str::FromStr for InputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<InputFormat, String> {
        Ok(match s {
            "folder" => InputFormat::Folder,
            "tar" => InputFormat::Tar,
            "wds" | "webdataset" => InputFormat::Wds,
            "parquet" => InputFormat::Parquet,
            _ => {
                return Err(format!(
                    "`{s}` is not an input format (folder, tar, wds or parquet)"
                ));
            }
        })
    }
}

impl std::fmt::Display for InputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputFormat::Folder => "folder",
            InputFormat::Tar => "tar",
            InputFormat::Wds => "wds",
            InputFormat::Parquet => "parquet",
        })
    }
}

/// The settings only hub inputs use (all optional).
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    /// Inputs after the first (`InputSpec::input`): each a file, a folder, a brace
    /// pattern or a glob.
    pub more_inputs: Vec<PathBuf>,
    /// The kind of input, instead of finding it from the content.
    pub format: Option<InputFormat>,
    /// WebDataset: the member extension (`cls`) or `.json` field holding the label.
    pub label_key: Option<String>,
    /// Parquet: the label column (`label`).
    pub label_column: Option<String>,
    /// A class-name file: `wnid name` per line, in class-index order.
    pub class_names: Option<PathBuf>,
}

/// The default WebDataset label member.
pub const DEFAULT_LABEL_KEY: &str = "cls";
/// The default parquet label column.
pub const DEFAULT_LABEL_COLUMN: &str = "label";

/// Which hub format a file's first bytes say it is: parquet files start with `PAR1`,
/// POSIX tars carry `ustar` at byte 257.
pub fn sniff(path: &Path) -> Result<Option<InputFormat>, BuildError> {
    let (file, _) = open_regular(path)
        .map_err(|reason| BuildError::Input(format!("{}: {reason}", path.display())))?;
    let mut head = [0u8; 512];
    let mut got = 0;
    let mut f = &file;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(BuildError::Input(format!(
                    "{}: cannot read: {}",
                    path.display(),
                    io_words(&e)
                )));
            }
        }
    }
    let head = &head[..got];
    Ok(if head.starts_with(b"PAR1") {
        Some(InputFormat::Parquet)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(InputFormat::Tar)
    } else {
        None
    })
}

/// The hub format `spec` names or holds, `None` for the folder and ILSVRC inputs.
/// A tar is a WebDataset when its first members include a label member (`KEY.cls`,
/// or `--label-key`) or `KEY.json`; ILSVRC2012's tars hold neither.
pub fn detect(spec: &InputSpec, o: &HubOptions) -> Result<Option<InputFormat>, BuildError> {
    match o.format {
        Some(f @ (InputFormat::Wds | InputFormat::Parquet)) => return Ok(Some(f)),
        Some(_) => return Ok(None),
        None => {}
    }
    if !o.more_inputs.is_empty() {
        // Several inputs are only read as a set of hub files.
        let files = expand_inputs(spec, o, None)?;
        return Ok(Some(kind_of_set(&files)?));
    }
    let input = &spec.input;
    let text = input.to_string_lossy();
    let exists = std::fs::symlink_metadata(input).is_ok();
    if !exists && (braces::has_braces(&text) || has_glob_name(input)) {
        let files = expand_inputs(spec, o, None)?;
        return Ok(Some(kind_of_set(&files)?));
    }
    let Ok(meta) = std::fs::metadata(input) else {
        return Ok(None); // the folder build says it does not exist
    };
    if meta.is_file() {
        // Unreadable: the archive build says why.
        return Ok(match sniff(input).ok().flatten() {
            Some(InputFormat::Parquet) => Some(InputFormat::Parquet),
            Some(InputFormat::Tar) if wds::looks_like_wds(input, label_key(o)).unwrap_or(false) => {
                Some(InputFormat::Wds)
            }
            _ => None,
        });
    }
    if meta.is_dir() {
        // A folder of hub files: regular files only at its top (a class-folder tree
        // has folders there).
        // Only the first files and those named .tar or .parquet are opened, so a flat
        // folder of 50,000 JPEGs costs a listing, not 50,000 reads; a file that cannot
        // be read here is left to the folder build to report.
        let (dirs, files) = top_level(input)?;
        if dirs > 0 || files.is_empty() {
            return Ok(None);
        }
        let named = |f: &&PathBuf| f.extension().is_some_and(|e| e == "tar" || e == "parquet");
        let candidates = files
            .iter()
            .take(16)
            .chain(files.iter().skip(16).filter(named));
        for f in candidates {
            match sniff(f).ok().flatten() {
                Some(InputFormat::Parquet) => return Ok(Some(InputFormat::Parquet)),
                Some(InputFormat::Tar) if wds::looks_like_wds(f, label_key(o)).unwrap_or(false) => {
                    return Ok(Some(InputFormat::Wds));
                }
                _ => {}
            }
        }
    }
    Ok(None)
}

fn label_key(o: &HubOptions) -> &str {
    o.label_key.as_deref().unwrap_or(DEFAULT_LABEL_KEY)
}

fn has_glob_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(braces::has_glob)
}

/// The kind of a set of files: every one must sniff the same.
fn kind_of_set(files: &[PathBuf]) -> Result<InputFormat, BuildError> {
    let mut kind = None;
    for f in files {
        let k = match sniff(f)? {
            Some(InputFormat::Parquet) => InputFormat::Parquet,
            Some(InputFormat::Tar) => InputFormat::Wds,
            _ => {
                return Err(BuildError::Input(format!(
                    "{}: neither a tar nor a parquet file (give --input-format to say which)",
                    f.display()
                )));
            }
        };
        match kind {
            None => kind = Some(k),
            Some(prev) if prev != k => {
                return Err(BuildError::Input(format!(
                    "{} is a {k} file but earlier inputs are {prev}: one build reads one kind",
                    f.display()
                )));
            }
            _ => {}
        }
    }
    kind.ok_or_else(|| BuildError::Input("no input files".into()))
}

/// (folders, regular files) at the top of `dir`, files sorted by name, hidden ones
/// left out.
fn top_level(dir: &Path) -> Result<(usize, Vec<PathBuf>), BuildError> {
    let rd = std::fs::read_dir(dir).map_err(|source| BuildError::Io {
        path: dir.to_path_buf(),
        op: "list",
        source,
    })?;
    let mut dirs = 0;
    let mut files = Vec::new();
    for e in rd {
        let e = e.map_err(|source| BuildError::Io {
            path: dir.to_path_buf(),
            op: "list",
            source,
        })?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        // The entry's type from the listing; a link is followed.
        let (is_dir, is_file) = match e.file_type() {
            Ok(t) if t.is_symlink() => match std::fs::metadata(&p) {
                Ok(m) => (m.is_dir(), m.is_file()),
                Err(_) => (false, false),
            },
            Ok(t) => (t.is_dir(), t.is_file()),
            Err(_) => (false, false),
        };
        if is_dir {
            dirs += 1;
        } else if is_file {
            files.push(p);
        }
    }
    files.sort_by(|a, b| crate::inputs::path_bytes(a).cmp(&crate::inputs::path_bytes(b)));
    Ok((dirs, files))
}

/// The input files, in build order: each input as given (a file), its top-level
/// files of the format (a folder, by name), or its expansion (a brace pattern in the
/// order it expands; a glob by name). A file named twice is an error.
pub fn expand_inputs(
    spec: &InputSpec,
    o: &HubOptions,
    format: Option<InputFormat>,
) -> Result<Vec<PathBuf>, BuildError> {
    let mut out = Vec::new();
    for input in std::iter::once(&spec.input).chain(&o.more_inputs) {
        let text = input.to_string_lossy().into_owned();
        if std::fs::symlink_metadata(input).is_ok() {
            let meta = std::fs::metadata(input).map_err(|source| BuildError::Io {
                path: input.clone(),
                op: "read",
                source,
            })?;
            if meta.is_dir() {
                let (_, files) = top_level(input)?;
                let mut any = false;
                for f in files {
                    let kind = sniff(&f)?;
                    let keep = match format {
                        Some(InputFormat::Parquet) => kind == Some(InputFormat::Parquet),
                        Some(_) => kind == Some(InputFormat::Tar),
                        None => kind.is_some(),
                    };
                    if keep {
                        out.push(f);
                        any = true;
                    }
                }
                if !any {
                    return Err(BuildError::Input(format!(
                        "{} holds no {} files at its top",
                        input.display(),
                        format.map_or("tar or parquet".into(), |f| f.to_string())
                    )));
                }
            } else {
                out.push(input.clone());
            }
        } else if braces::has_braces(&text) {
            let names = braces::expand(&text)
                .map_err(|e| BuildError::Input(format!("--input {text}: {e}")))?;
            for n in names {
                let p = PathBuf::from(&n);
                if !p.is_file() {
                    return Err(BuildError::Input(format!(
                        "{n} (from the pattern {text}) does not exist or is not a file"
                    )));
                }
                out.push(p);
            }
        } else if has_glob_name(input) {
            let dir = match input.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let pattern = input.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let (_, files) = top_level(&dir)?;
            let before = out.len();
            for f in files {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if braces::glob_match(pattern, name) {
                    out.push(
                        if input.parent().is_some_and(|d| d.as_os_str().is_empty()) {
                            PathBuf::from(name)
                        } else {
                            f
                        },
                    );
                }
            }
            if out.len() == before {
                return Err(BuildError::Input(format!("no file matches {text}")));
            }
        } else {
            return Err(BuildError::Input(format!(
                "the input {} does not exist",
                input.display()
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for p in &out {
        let key = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if !seen.insert(key) {
            return Err(BuildError::Input(format!(
                "{} is named twice among the inputs",
                p.display()
            )));
        }
    }
    Ok(out)
}

/// One input file of a hub build.
#[derive(Clone, Debug)]
pub struct HubFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its name in sample paths and reports: the file name, or the path as given when
    /// two inputs share a file name.
    pub label: PathBuf,
    /// Size in bytes when listed.
    pub len: u64,
}

/// The files a hub build reads, and what it found out about them (kept in
/// [`crate::Inputs`] so the build's reader can open them).
#[derive(Clone, Debug)]
pub struct HubFiles {
    /// Tars or parquet files.
    pub format: InputFormat,
    /// In build order.
    pub files: Vec<HubFile>,
    /// Where the class list came from, in words (for the summary and `build.json`).
    pub classes_from: String,
    /// Parquet: the image column's leaf path (`image.bytes`).
    pub image_column: Option<String>,
}

impl HubFiles {
    /// The file a sample path (`<file label>/<member or row>`) belongs to.
    fn file_of(&self, path: &Path, hint: usize) -> Option<usize> {
        if self
            .files
            .get(hint)
            .is_some_and(|f| path.starts_with(&f.label))
        {
            return Some(hint);
        }
        self.files.iter().position(|f| path.starts_with(&f.label))
    }

    /// What was read, in words: `3 WebDataset tars (a-0000.tar .. a-0002.tar)`.
    pub fn describe(&self) -> String {
        let kind = match self.format {
            InputFormat::Parquet => "parquet file",
            _ => "WebDataset tar",
        };
        let n = self.files.len();
        let first = self.files.first().map(|f| display_path(&f.label));
        let last = self.files.last().map(|f| display_path(&f.label));
        match (n, first, last) {
            (1, Some(f), _) => format!("1 {kind} ({f})"),
            (_, Some(f), Some(l)) => format!("{n} {kind}s ({f} .. {l})"),
            _ => format!("no {kind}s"),
        }
    }
}

/// What [`discover`] found: the parts of [`crate::Inputs`], and the files to read.
#[derive(Clone, Debug)]
pub struct HubInputs {
    /// The classes, in label order.
    pub classes: Vec<ClassInfo>,
    /// The samples, in build order.
    pub images: Vec<InputImage>,
    /// Samples that cannot be used, known before decoding.
    pub rejects: Vec<Reject>,
    /// Members not read on purpose.
    pub ignored: Vec<crate::Ignored>,
    /// The files, for the reader.
    pub files: Arc<HubFiles>,
}

impl From<HubInputs> for crate::Inputs {
    fn from(h: HubInputs) -> crate::Inputs {
        crate::Inputs {
            classes: h.classes,
            images: h.images,
            rejects: h.rejects,
            ignored: h.ignored,
            labels_file: None,
            archive: None,
            hub: Some(h.files),
        }
    }
}

/// One sample found while listing, before its label is checked against the classes.
pub(crate) struct Sample {
    /// Path below the file's label (a member name, or a row number).
    pub path: PathBuf,
    /// For people: the member, or `row N (its image.path)`.
    pub shown: String,
    /// The label as found: an index, or a name to look up.
    pub label: RawLabel,
    /// Bytes of the image (a parquet row's is an estimate, for read-ahead budgets).
    pub size: u64,
    /// Member offset (tar) or row number (parquet).
    pub offset: u64,
}

/// A label as a sample states it.
pub(crate) enum RawLabel {
    Index(i64),
    Name(String),
}

/// What listing one file gave.
pub(crate) struct FileListing {
    pub samples: Vec<Sample>,
    pub rejects: Vec<(String, String)>,
    pub ignored: Vec<(String, String)>,
    /// Parquet: the class names the file's `huggingface` metadata gives.
    pub class_names: Option<Vec<String>>,
    /// Parquet: the image column used.
    pub image_column: Option<String>,
}

/// List the samples of the hub files `spec` names (see [`detect`]).
pub fn discover(
    spec: &InputSpec,
    o: &HubOptions,
    format: InputFormat,
) -> Result<HubInputs, BuildError> {
    let paths = expand_inputs(spec, o, Some(format))?;
    let mut names: HashMap<std::ffi::OsString, usize> = HashMap::new();
    for p in &paths {
        *names
            .entry(p.file_name().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    let mut files = Vec::new();
    for p in &paths {
        let name = p.file_name().unwrap_or_default();
        let label = if names[name] == 1 {
            PathBuf::from(name)
        } else {
            p.clone()
        };
        let (_, len) = open_regular(p)
            .map_err(|reason| BuildError::Input(format!("{}: {reason}", p.display())))?;
        files.push(HubFile {
            path: p.clone(),
            label,
            len,
        });
    }
    let explicit = explicit_classes(spec, o)?;
    let mut listings = Vec::new();
    for f in &files {
        let l = match format {
            InputFormat::Parquet => pq::list(f, o.label_column.as_deref())?,
            _ => wds::list(f, label_key(o))?,
        };
        listings.push(l);
    }
    let meta_names = listings.iter().find_map(|l| l.class_names.clone());
    let (classes, classes_from) = match (explicit, meta_names) {
        (Some((c, from)), _) => (c, from),
        (None, Some(names)) => (
            classes_from_names(&names),
            format!(
                "the huggingface metadata of {} (ClassLabel names)",
                display_path(&files[0].label)
            ),
        ),
        (None, None) => match near_synset_mapping(&files)? {
            Some((c, from)) => (c, from),
            None => {
                return Err(BuildError::Input(format!(
                    "{}: the labels are class indices, and nothing names the classes: give \
                     --class-names FILE (`wnid name` per line, in index order), \
                     --classes-from a train dataset, or --devkit",
                    display_path(&files[0].path)
                )));
            }
        },
    };
    let by_wnid: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.wnid.as_str(), i as u32))
        .collect();
    let mut images = Vec::new();
    let mut rejects = Vec::new();
    let mut ignored = Vec::new();
    let mut image_column = None;
    // WebDataset keys are unique over the whole set: a sample key seen in an earlier
    // tar is a duplicate (the key is the member path up to its extension).
    let mut keys: HashMap<String, usize> = HashMap::new();
    for (at, (f, l)) in files.iter().zip(listings).enumerate() {
        let mtime = std::fs::metadata(&f.path)
            .map(|m| crate::inputs::mtime(&m))
            .unwrap_or((0, 0));
        let file_shown = display_path(&f.label);
        image_column = image_column.or(l.image_column);
        for (what, why) in l.rejects {
            rejects.push(Reject {
                path: format!("{file_shown}/{what}"),
                reason: why,
            });
        }
        for (what, why) in l.ignored {
            ignored.push(crate::Ignored {
                path: format!("{file_shown}/{what}"),
                reason: why,
            });
        }
        for s in l.samples {
            if format == InputFormat::Wds {
                let key = s
                    .shown
                    .split_once('.')
                    .map_or(&*s.shown, |(k, _)| k)
                    .to_string();
                if let Some(&first) = keys.get(&key).filter(|&&i| i != at) {
                    rejects.push(Reject {
                        path: format!("{file_shown}/{}", s.shown),
                        reason: format!(
                            "sample {key} is also in {} (a duplicate key); this later copy is \
                             not used",
                            display_path(&files[first].label)
                        ),
                    });
                    continue;
                }
                keys.insert(key, at);
            }
            let rel = match format {
                InputFormat::Parquet => format!("{file_shown} {}", s.shown),
                _ => format!("{file_shown}/{}", s.shown),
            };
            let label = match &s.label {
                RawLabel::Index(i) => u32::try_from(*i)
                    .ok()
                    .filter(|&i| (i as usize) < classes.len())
                    .ok_or_else(|| {
                        format!(
                            "label {i} is outside the class list (0 to {})",
                            classes.len().saturating_sub(1)
                        )
                    }),
                RawLabel::Name(n) => by_wnid.get(n.as_str()).copied().ok_or_else(|| {
                    format!("label `{n}` is neither a class index nor a wnid in the class list")
                }),
            };
            match label {
                Ok(label) => images.push(InputImage {
                    path: f.label.join(&s.path),
                    rel,
                    label,
                    size: s.size,
                    mtime_s: mtime.0,
                    mtime_ns: mtime.1,
                    offset: Some(s.offset),
                }),
                Err(reason) => rejects.push(Reject { path: rel, reason }),
            }
        }
    }
    let hub = HubFiles {
        format,
        files,
        classes_from,
        image_column,
    };
    tracing::info!(
        source = %hub.describe(),
        classes = classes.len(),
        classes_from = %hub.classes_from,
        samples = images.len(),
        rejects = rejects.len(),
        "hub input listed"
    );
    Ok(HubInputs {
        classes,
        images,
        rejects,
        ignored,
        files: Arc::new(hub),
    })
}

/// Classes given outright: `--classes-from` (already in `spec.classes`), then
/// `--class-names`, then `--devkit` (its 1,000 wnids sorted, the order timm and the
/// hub index them in).
fn explicit_classes(
    spec: &InputSpec,
    o: &HubOptions,
) -> Result<Option<(Vec<ClassInfo>, String)>, BuildError> {
    if let Some(c) = &spec.classes {
        return Ok(Some((c.clone(), "--classes-from".into())));
    }
    if let Some(p) = &o.class_names {
        return Ok(Some((
            read_class_names(p)?,
            format!("--class-names {}", p.display()),
        )));
    }
    if let Some(d) = crate::devkit::Devkit::load(&spec.devkit)? {
        let mut c: Vec<ClassInfo> = d
            .names()
            .into_iter()
            .map(|(wnid, name)| ClassInfo { wnid, name })
            .collect();
        c.sort_by(|a, b| a.wnid.cmp(&b.wnid));
        return Ok(Some((c, "--devkit (its wnids, sorted)".into())));
    }
    Ok(None)
}

/// `LOC_synset_mapping.txt` beside the first input file (ImageNet's class list, in
/// index order; `synth --format` writes one).
fn near_synset_mapping(files: &[HubFile]) -> Result<Option<(Vec<ClassInfo>, String)>, BuildError> {
    let Some(dir) = files.first().and_then(|f| f.path.parent()) else {
        return Ok(None);
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let p = dir.join(crate::inputs::SYNSET_MAPPING);
    if !p.is_file() {
        return Ok(None);
    }
    Ok(Some((read_class_names(&p)?, format!("{}", p.display()))))
}

/// A class-name file: `wnid name` per line (or a wnid alone), in index order.
pub fn read_class_names(path: &Path) -> Result<Vec<ClassInfo>, BuildError> {
    let text = crate::read::read_text(path)?;
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (wnid, name) = match line.split_once(char::is_whitespace) {
            Some((w, n)) => (w.to_string(), n.trim().to_string()),
            None => (line.to_string(), line.to_string()),
        };
        if wnid.contains(['/', '\\', '\0']) || wnid == "." || wnid == ".." {
            return Err(BuildError::Input(format!(
                "{}: line {}: `{wnid}` is not a plain wnid",
                path.display(),
                n + 1
            )));
        }
        if let Some(first) = seen.insert(wnid.clone(), n + 1) {
            return Err(BuildError::Input(format!(
                "{}: line {}: {wnid} is listed again (first on line {first})",
                path.display(),
                n + 1
            )));
        }
        out.push(ClassInfo { wnid, name });
    }
    if out.is_empty() {
        return Err(BuildError::Input(format!(
            "{}: no classes (one `wnid name` per line)",
            path.display()
        )));
    }
    Ok(out)
}

/// Classes from ClassLabel names: the names are the wnids when they all look like
/// one (`n01440764`); otherwise (the hub's `tench, Tinca tinca`, which repeat and may
/// hold `/`) the wnid is the zero-padded index and the name is kept.
fn classes_from_names(names: &[String]) -> Vec<ClassInfo> {
    let is_wnid =
        |s: &str| s.len() == 9 && s.starts_with('n') && s[1..].bytes().all(|b| b.is_ascii_digit());
    let unique = names.iter().collect::<std::collections::HashSet<_>>().len() == names.len();
    if unique && names.iter().all(|n| is_wnid(n)) {
        return names
            .iter()
            .map(|n| ClassInfo {
                wnid: n.clone(),
                name: n.clone(),
            })
            .collect();
    }
    let width = names.len().saturating_sub(1).to_string().len().max(4);
    names
        .iter()
        .enumerate()
        .map(|(i, n)| ClassInfo {
            wnid: format!("{i:0width$}"),
            name: n.clone(),
        })
        .collect()
}

/// Reads samples' image bytes for the build, one thread, in record order.
#[derive(Debug)]
pub(crate) struct Reader {
    hub: Arc<HubFiles>,
    state: Mutex<ReaderState>,
    /// Set once a file is found shorter or longer than when it was listed (cut or
    /// rewritten during the build): the build stops rather than reject the rest.
    damage: std::sync::OnceLock<Damage>,
}

#[derive(Debug, Default)]
struct ReaderState {
    /// The open file, by index (one at a time: a set of 1,024 tars must not hold
    /// 1,024 descriptors).
    open: Option<(usize, Arc<File>)>,
    /// The file the last sample came from.
    last: usize,
    /// The parquet cursor.
    cursor: Option<Box<pq::Cursor>>,
}

/// A file that changed under the build: its path and what was found.
type Damage = Option<(PathBuf, String)>;

impl Reader {
    pub fn new(hub: Arc<HubFiles>) -> Reader {
        Reader {
            hub,
            state: Mutex::new(ReaderState::default()),
            damage: std::sync::OnceLock::new(),
        }
    }

    /// The file that changed under the build, and how, if one did.
    pub fn damaged(&self) -> Option<(&Path, &str)> {
        self.damage
            .get()
            .and_then(|d| d.as_ref())
            .map(|(p, why)| (p.as_path(), why.as_str()))
    }

    /// The image bytes of one sample; `Err` is the reject reason.
    pub fn read(&self, img: &InputImage) -> Result<Vec<u8>, String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let at = self
            .hub
            .file_of(&img.path, st.last)
            .ok_or_else(|| format!("internal error: {} names no input file", img.rel))?;
        st.last = at;
        let f = &self.hub.files[at];
        let offset = img
            .offset
            .ok_or_else(|| format!("internal error: no offset for {}", img.rel))?;
        let file = match &st.open {
            Some((i, file)) if *i == at => Arc::clone(file),
            _ => {
                st.open = None;
                let (file, _) =
                    open_regular(&f.path).map_err(|r| format!("{}: {r}", f.path.display()))?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                if len != f.len {
                    let why = format!(
                        "it is {len} bytes, not the {} bytes it was when listed: it changed \
                         during the build",
                        f.len
                    );
                    let _ = self.damage.set(Some((f.path.clone(), why.clone())));
                    return Err(why);
                }
                let file = Arc::new(file);
                st.open = Some((at, Arc::clone(&file)));
                file
            }
        };
        match self.hub.format {
            InputFormat::Parquet => {
                let column = self.hub.image_column.as_deref().unwrap_or("image.bytes");
                let st = &mut *st;
                let reuse = st.cursor.as_ref().is_some_and(|c| c.file == at);
                if !reuse {
                    st.cursor = Some(Box::new(pq::Cursor::open(at, f, file, column)?));
                }
                let cursor = st.cursor.as_mut().expect("just set");
                cursor.read_row(offset)
            }
            _ => {
                if img.size > MAX_INPUT_BYTES {
                    return Err(format!(
                        "is {} bytes, more than the {} MiB read for one image",
                        img.size,
                        MAX_INPUT_BYTES >> 20
                    ));
                }
                let mut buf = vec![0u8; img.size as usize];
                crate::archive::read_exact_at(&file, &mut buf, offset).map_err(|e| {
                    format!("cannot read from {}: {}", f.path.display(), io_words(&e))
                })?;
                Ok(buf)
            }
        }
    }
}
