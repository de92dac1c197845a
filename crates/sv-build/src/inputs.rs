//! Finding the images of a split and their labels.
//!
//! Two layouts are read:
//! - a tree, `DIR/<wnid>/<file>` (ImageNet's train layout, and val once sorted into
//!   class folders): the folder names are the labels;
//! - a flat folder plus a labels file: Kaggle's `LOC_val_solution.csv`
//!   (`ImageId,PredictionString`, the wnid first in the prediction string) or plain
//!   `filename wnid` lines (the file name with or without its extension).
//!
//! Class indices are the sorted wnids, or copied from an existing dataset's manifest
//! (`classes_from`) so val labels agree with train. Class names come from
//! `LOC_synset_mapping.txt` (`wnid name` lines) in the input folder or its parent.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use sv_core::ClassInfo;

use crate::BuildError;

/// One input image: its path relative to the input folder and its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputImage {
    /// Path relative to the input folder, `/`-separated.
    pub rel: String,
    /// Class index.
    pub label: u32,
}

/// A file found in the input that cannot be used, known before decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unlabelled {
    /// Path relative to the input folder.
    pub rel: String,
    /// Why it is skipped.
    pub reason: String,
}

/// What [`discover`] found.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// The classes, in label order.
    pub classes: Vec<ClassInfo>,
    /// The images, in build order (sorted by relative path).
    pub images: Vec<InputImage>,
    /// Files skipped before decoding (no label, unknown class).
    pub skipped: Vec<Unlabelled>,
    /// The labels file that was used, if any.
    pub labels_file: Option<PathBuf>,
}

/// Where to look.
#[derive(Clone, Debug, Default)]
pub struct InputSpec {
    /// The split's folder.
    pub input: PathBuf,
    /// A labels file for a flat folder; looked for beside the folder when absent.
    pub labels: Option<PathBuf>,
    /// Class list to use instead of the sorted wnids found.
    pub classes: Option<Vec<ClassInfo>>,
}

/// Names of the labels files looked for beside a flat folder.
const LABEL_FILES: &[&str] = &["LOC_val_solution.csv", "val_labels.txt"];
/// ImageNet's class-name file.
const SYNSET_MAPPING: &str = "LOC_synset_mapping.txt";

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
    let path = path.to_path_buf();
    move |source| BuildError::Io { path, op, source }
}

/// List the split's images and labels.
pub fn discover(spec: &InputSpec) -> Result<Inputs, BuildError> {
    let input = &spec.input;
    let meta = std::fs::metadata(input).map_err(io_err(input, "read"))?;
    if !meta.is_dir() {
        return Err(BuildError::Input(format!(
            "{} is not a folder",
            input.display()
        )));
    }
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(input).map_err(io_err(input, "list"))? {
        let entry = entry.map_err(io_err(input, "list"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let ft = std::fs::metadata(entry.path())
            .map_err(io_err(&entry.path(), "stat"))?
            .file_type();
        if ft.is_dir() {
            dirs.push(name);
        } else if ft.is_file() {
            files.push(name);
        }
    }
    dirs.sort();
    files.sort();

    let names = read_synset_mapping(input)?;
    if !dirs.is_empty() && spec.labels.is_none() {
        tree(input, dirs, spec, &names)
    } else {
        flat(input, files, spec, &names)
    }
}

fn tree(
    input: &Path,
    dirs: Vec<String>,
    spec: &InputSpec,
    names: &HashMap<String, String>,
) -> Result<Inputs, BuildError> {
    let classes = match &spec.classes {
        Some(c) => c.clone(),
        None => dirs.iter().map(|w| class_info(w, names)).collect(),
    };
    let index = class_index(&classes);
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    for wnid in &dirs {
        let dir = input.join(wnid);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io_err(&dir, "list"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        files.sort();
        match index.get(wnid.as_str()) {
            Some(&label) => images.extend(files.into_iter().map(|f| InputImage {
                rel: format!("{wnid}/{f}"),
                label,
            })),
            None => skipped.extend(files.into_iter().map(|f| Unlabelled {
                rel: format!("{wnid}/{f}"),
                reason: format!("class folder {wnid} is not in the class list"),
            })),
        }
    }
    Ok(Inputs {
        classes,
        images,
        skipped,
        labels_file: None,
    })
}

fn flat(
    input: &Path,
    files: Vec<String>,
    spec: &InputSpec,
    names: &HashMap<String, String>,
) -> Result<Inputs, BuildError> {
    let labels_file = match &spec.labels {
        Some(p) => p.clone(),
        None => find_labels_file(input).ok_or_else(|| {
            BuildError::Input(format!(
                "{} holds no class folders, and no labels file was given (--labels) or \
                 found beside it ({})",
                input.display(),
                LABEL_FILES.join(", ")
            ))
        })?,
    };
    let labels = read_labels(&labels_file)?;
    let classes = match &spec.classes {
        Some(c) => c.clone(),
        None => {
            let wnids: BTreeSet<&str> = labels.values().map(String::as_str).collect();
            wnids.into_iter().map(|w| class_info(w, names)).collect()
        }
    };
    if classes.is_empty() {
        return Err(BuildError::Input(format!(
            "{}: no labels found",
            labels_file.display()
        )));
    }
    let index = class_index(&classes);
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        if LABEL_FILES.contains(&f.as_str()) || f == SYNSET_MAPPING {
            continue;
        }
        let stem = f.rsplit_once('.').map_or(f.as_str(), |(s, _)| s);
        let wnid = labels.get(f.as_str()).or_else(|| labels.get(stem));
        match wnid.map(|w| (w, index.get(w.as_str()))) {
            Some((_, Some(&label))) => images.push(InputImage { rel: f, label }),
            Some((w, None)) => skipped.push(Unlabelled {
                reason: format!("class {w} is not in the class list"),
                rel: f,
            }),
            None => skipped.push(Unlabelled {
                reason: format!("no label in {}", labels_file.display()),
                rel: f,
            }),
        }
    }
    Ok(Inputs {
        classes,
        images,
        skipped,
        labels_file: Some(labels_file),
    })
}

fn find_labels_file(input: &Path) -> Option<PathBuf> {
    let parent = input.parent();
    LABEL_FILES.iter().find_map(|name| {
        [Some(input), parent]
            .into_iter()
            .flatten()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
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

/// `wnid -> name` from `LOC_synset_mapping.txt` in `input` or its parent.
fn read_synset_mapping(input: &Path) -> Result<HashMap<String, String>, BuildError> {
    let Some(path) = [Some(input), input.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(SYNSET_MAPPING))
        .find(|p| p.is_file())
    else {
        return Ok(HashMap::new());
    };
    let text = std::fs::read_to_string(&path).map_err(io_err(&path, "read"))?;
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
    let text = std::fs::read_to_string(path).map_err(io_err(path, "read"))?;
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
        "{}: line {}: expected `ImageId,wnid ...` or `filename wnid`, found {shown:?}",
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

    #[test]
    fn tree_layout_sorted_with_names() {
        let d = tempfile::tempdir().unwrap();
        let train = d.path().join("train");
        touch(&train.join("n2/b.JPEG"));
        touch(&train.join("n2/a.JPEG"));
        touch(&train.join("n1/z.JPEG"));
        std::fs::write(d.path().join(SYNSET_MAPPING), "n1 one, uno\nn2 two\n").unwrap();
        let got = discover(&InputSpec {
            input: train,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(got.classes[0].name, "one, uno");
        let rels: Vec<_> = got
            .images
            .iter()
            .map(|i| (i.rel.as_str(), i.label))
            .collect();
        assert_eq!(rels, [("n1/z.JPEG", 0), ("n2/a.JPEG", 1), ("n2/b.JPEG", 1)]);
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
        let got = discover(&InputSpec {
            input: val,
            labels: None,
            classes: Some(classes),
        })
        .unwrap();
        let rels: Vec<_> = got
            .images
            .iter()
            .map(|i| (i.rel.as_str(), i.label))
            .collect();
        assert_eq!(rels, [("v_1.JPEG", 1), ("v_2.JPEG", 0)]);
        assert_eq!(got.skipped.len(), 2);
        assert!(got.skipped[0].reason.contains("no label"));
        assert!(
            got.skipped[1]
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
        let e = discover(&InputSpec {
            input: d.path().join("x"),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("--labels"), "{e}");
    }
}
