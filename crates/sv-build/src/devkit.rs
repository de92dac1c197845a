//! The ILSVRC2012 devkit (`ILSVRC2012_devkit_t12.tar.gz`): `data/meta.mat` (the
//! struct array `synsets`, with `ILSVRC2012_ID`, `WNID`, `words` and `num_children`
//! per synset; the 1,000 classes are the leaves, `num_children == 0`) and
//! `data/ILSVRC2012_validation_ground_truth.txt` (line `n` is the ILSVRC2012_ID of
//! `ILSVRC2012_val_<n, 8 digits>.JPEG`).
//!
//! Val is labelled ID -> WNID through meta.mat, then the class list's index (train's,
//! with `--classes-from`); class names are meta.mat's `words`. The devkit is read from
//! its archive (`.tar.gz` or `.tar`, streamed), from its extracted folder, or from
//! its two files given separately.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::BuildError;
use crate::mat::{self, Value};
use crate::read::{MAX_INPUT_BYTES, io_words, open_regular, read_text};

/// The ground truth's file name in the devkit.
pub const GROUND_TRUTH: &str = "ILSVRC2012_validation_ground_truth.txt";
/// The synsets' file name in the devkit.
pub const META: &str = "meta.mat";

/// What the devkit says.
#[derive(Clone, Debug)]
pub struct Devkit {
    /// Leaf synsets: ILSVRC2012_ID -> (WNID, words).
    classes: HashMap<u32, (String, String)>,
    /// Where meta.mat came from, for messages.
    meta_name: String,
    /// The ground truth's IDs, line by line, and where it came from.
    ground_truth: Option<(String, Vec<u32>)>,
}

impl Devkit {
    /// Load from `paths` (none: no devkit). Each is a devkit archive, an extracted
    /// devkit folder, a `meta.mat`, or a ground-truth file.
    pub fn load(paths: &[PathBuf]) -> Result<Option<Devkit>, BuildError> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut meta: Option<(String, Vec<u8>)> = None;
        let mut truth: Option<(String, String)> = None;
        for p in paths {
            let (m, t) = gather(p)?;
            if m.is_some() {
                meta = m;
            }
            if t.is_some() {
                truth = t;
            }
        }
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let Some((meta_name, bytes)) = meta else {
            return Err(BuildError::Input(format!(
                "{}: no data/{META} in the devkit (it names the classes)",
                shown.join(", ")
            )));
        };
        let classes =
            parse_meta(&bytes).map_err(|e| BuildError::Input(format!("{meta_name}: {e}")))?;
        let ground_truth = match truth {
            Some((name, text)) => Some((name.clone(), parse_truth(&name, &text, &classes)?)),
            None => None,
        };
        Ok(Some(Devkit {
            classes,
            meta_name,
            ground_truth,
        }))
    }

    /// Whether a validation ground truth was found.
    pub fn has_ground_truth(&self) -> bool {
        self.ground_truth.is_some()
    }

    /// `wnid -> words` for the 1,000 classes.
    pub fn names(&self) -> HashMap<String, String> {
        self.classes.values().cloned().collect()
    }

    /// `ILSVRC2012_val_<8 digits> -> wnid` for the val images named by `stems`;
    /// `Err` unless the ground truth has exactly one line per such image.
    pub fn val_labels<'a>(
        &self,
        stems: impl Iterator<Item = &'a str>,
    ) -> Result<(HashMap<String, String>, String), BuildError> {
        let Some((name, ids)) = &self.ground_truth else {
            return Err(BuildError::Input(format!(
                "the devkit ({}) has no {GROUND_TRUTH} to label val with",
                self.meta_name
            )));
        };
        let images = stems.filter(|s| val_number(s).is_some()).count();
        if images != ids.len() {
            return Err(BuildError::Input(format!(
                "{name} has {} lines but the input holds {images} val images named \
                 ILSVRC2012_val_<8 digits>: one line per image is needed (a truncated or \
                 wrong ground truth, or an incomplete val set)",
                ids.len()
            )));
        }
        let labels = ids
            .iter()
            .enumerate()
            .map(|(n, id)| {
                let wnid = self.classes[id].0.clone();
                (format!("ILSVRC2012_val_{:08}", n + 1), wnid)
            })
            .collect();
        Ok((labels, name.clone()))
    }
}

/// The number of `ILSVRC2012_val_00000001`, if that is the name's form.
fn val_number(stem: &str) -> Option<u32> {
    let digits = stem.strip_prefix("ILSVRC2012_val_")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// meta.mat and the ground truth from one path: (name, bytes) and (name, text).
#[allow(clippy::type_complexity)]
fn gather(p: &Path) -> Result<(Option<(String, Vec<u8>)>, Option<(String, String)>), BuildError> {
    let meta = std::fs::metadata(p)
        .map_err(|e| BuildError::Input(format!("the devkit {}: {}", p.display(), io_words(&e))))?;
    if meta.is_dir() {
        let find = |name: &str| {
            [
                p.join("data").join(name),
                p.join(name),
                p.join("ILSVRC2012_devkit_t12").join("data").join(name),
            ]
            .into_iter()
            .find(|c| std::fs::metadata(c).is_ok_and(|m| m.is_file()))
        };
        let m = match find(META) {
            Some(f) => Some((f.display().to_string(), read_bytes(&f)?)),
            None => None,
        };
        let t = match find(GROUND_TRUTH) {
            Some(f) => Some((f.display().to_string(), read_text(&f)?)),
            None => None,
        };
        return Ok((m, t));
    }
    let head = {
        let (mut f, _) =
            open_regular(p).map_err(|r| BuildError::Input(format!("{}: {r}", p.display())))?;
        let mut h = vec![0u8; 512];
        let n = read_up_to(&mut f, &mut h).map_err(|e| io_error(p, &e))?;
        h.truncate(n);
        h
    };
    if head.starts_with(&[0x1f, 0x8b]) || (head.len() >= 262 && &head[257..262] == b"ustar") {
        return from_archive(p, head.starts_with(&[0x1f, 0x8b]));
    }
    if head.starts_with(b"MATLAB") {
        return Ok((Some((p.display().to_string(), read_bytes(p)?)), None));
    }
    Ok((None, Some((p.display().to_string(), read_text(p)?))))
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn io_error(p: &Path, e: &std::io::Error) -> BuildError {
    BuildError::Input(format!("{}: {}", p.display(), io_words(e)))
}

fn read_bytes(p: &Path) -> Result<Vec<u8>, BuildError> {
    crate::read::read_regular(p, MAX_INPUT_BYTES)
        .map_err(|r| BuildError::Input(format!("{}: {r}", p.display())))
}

/// Stream through a devkit archive for its two files.
#[allow(clippy::type_complexity)]
fn from_archive(
    p: &Path,
    gz: bool,
) -> Result<(Option<(String, Vec<u8>)>, Option<(String, String)>), BuildError> {
    let (file, _) =
        open_regular(p).map_err(|r| BuildError::Input(format!("{}: {r}", p.display())))?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let bad = |what: String| BuildError::Input(format!("{}: {what}", p.display()));
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {}", io_words(&e))))?;
    let (mut meta, mut truth) = (None, None);
    let mut last = String::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            bad(format!(
                "a damaged archive (after member {}): {}",
                if last.is_empty() { "none" } else { &last },
                io_words(&e)
            ))
        })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        last = name.clone();
        let file_name = name.rsplit('/').next().unwrap_or("");
        let wanted = file_name == META || file_name == GROUND_TRUTH;
        if !wanted || !entry.header().entry_type().is_file() {
            continue;
        }
        if entry.size() > MAX_INPUT_BYTES {
            return Err(bad(format!(
                "member {name} is {} bytes: too large",
                entry.size()
            )));
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("member {name}: {}", io_words(&e))))?;
        let shown = format!("{}: {name}", p.display());
        if file_name == META {
            meta = Some((shown, bytes));
        } else {
            let text = String::from_utf8(bytes)
                .map_err(|_| bad(format!("member {name} is not UTF-8 text")))?;
            truth = Some((shown, text));
        }
    }
    if meta.is_none() {
        return Err(bad(format!(
            "no data/{META} in the devkit archive (it names the classes)"
        )));
    }
    Ok((meta, truth))
}

/// Leaf synsets from meta.mat's `synsets`.
fn parse_meta(bytes: &[u8]) -> Result<HashMap<u32, (String, String)>, String> {
    let vars = mat::read(bytes)?;
    let synsets = vars
        .iter()
        .find(|v| v.name == "synsets")
        .ok_or("no variable `synsets`")?;
    let Value::Struct { fields, elems, .. } = &synsets.value else {
        return Err("`synsets` is not a struct array".into());
    };
    let field = |name: &str| {
        fields
            .iter()
            .position(|f| f == name)
            .ok_or_else(|| format!("`synsets` has no field {name}"))
    };
    let (id_f, wnid_f, words_f) = (field("ILSVRC2012_ID")?, field("WNID")?, field("words")?);
    let children_f = field("num_children").ok();
    let mut out = HashMap::new();
    for (i, e) in elems.iter().enumerate() {
        let at = |what: &str| format!("synset {}: {what}", i + 1);
        let id = e[id_f]
            .scalar()
            .filter(|x| x.fract() == 0.0 && *x >= 1.0 && *x <= f64::from(u32::MAX))
            .ok_or_else(|| at("ILSVRC2012_ID is not a positive whole number"))?
            as u32;
        let leaf = children_f.is_none_or(|f| e[f].scalar() == Some(0.0));
        if !leaf {
            continue;
        }
        let wnid = e[wnid_f]
            .text()
            .ok_or_else(|| at("WNID is not text"))?
            .trim();
        let words = e[words_f]
            .text()
            .ok_or_else(|| at("words is not text"))?
            .trim();
        if out
            .insert(id, (wnid.to_string(), words.to_string()))
            .is_some()
        {
            return Err(at(&format!("ILSVRC2012_ID {id} appears twice")));
        }
    }
    if out.is_empty() {
        return Err("`synsets` holds no leaf classes".into());
    }
    Ok(out)
}

fn parse_truth(
    name: &str,
    text: &str,
    classes: &HashMap<u32, (String, String)>,
) -> Result<Vec<u32>, BuildError> {
    let mut ids = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let id: u32 = line.parse().map_err(|_| {
            BuildError::Input(format!(
                "{name}: line {}: `{}` is not an ILSVRC2012_ID",
                n + 1,
                line.chars().take(40).collect::<String>()
            ))
        })?;
        if !classes.contains_key(&id) {
            return Err(BuildError::Input(format!(
                "{name}: line {}: ID {id} is not one of meta.mat's {} classes",
                n + 1,
                classes.len()
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn val_names_are_recognised() {
        assert_eq!(val_number("ILSVRC2012_val_00000001"), Some(1));
        assert_eq!(val_number("ILSVRC2012_val_0000001"), None);
        assert_eq!(val_number("ILSVRC2012_val_0000000x"), None);
    }
}
