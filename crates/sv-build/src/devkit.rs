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

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::BuildError;
use crate::mat::{self, Value};
use crate::read::{MAX_INPUT_BYTES, io_words, open_regular, quote, read_text, text_of};

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

    /// `ILSVRC2012_val_<8 digits> -> wnid` for the val images among the file names
    /// `files` (top-level names, with their extensions). Line `n` of the ground truth
    /// labels image `n`: `Err`, naming both, unless every line has its image and every
    /// image its line, each number once.
    pub fn val_labels<'a>(
        &self,
        files: impl Iterator<Item = &'a str>,
    ) -> Result<(HashMap<String, String>, String), BuildError> {
        let Some((name, ids)) = &self.ground_truth else {
            return Err(BuildError::Input(format!(
                "the devkit ({}) has no {GROUND_TRUTH} to label val with",
                self.meta_name
            )));
        };
        let mut by_number: BTreeMap<u32, &str> = BTreeMap::new();
        for file in files {
            let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
            let Some(n) = val_number(stem) else { continue };
            if let Some(other) = by_number.insert(n, file) {
                return Err(BuildError::Input(format!(
                    "{other} and {file} are both val image {n}: line {n} of {name} labels \
                     one image (remove the one that does not belong)"
                )));
            }
        }
        let lines = ids.len();
        let unlabelled = by_number
            .iter()
            .find(|(n, _)| **n == 0 || **n as usize > lines)
            .map(|(_, f)| *f);
        let missing = (1..=lines as u32).find(|n| !by_number.contains_key(n));
        let mut problems = Vec::new();
        if let Some(n) = missing {
            problems.push(format!(
                "line {n} of {name} labels ILSVRC2012_val_{n:08}, which is not in the input"
            ));
        }
        if let Some(f) = unlabelled {
            problems.push(format!(
                "{f} has no line in {name}, which has {lines} lines (one per val image, \
                 line n for ILSVRC2012_val_<n, 8 digits>)"
            ));
        }
        if !problems.is_empty() {
            return Err(BuildError::Input(format!(
                "the val images and the ground truth do not match: {} (a truncated or wrong \
                 ground truth, or an incomplete val set)",
                problems.join("; and ")
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
        let n = read_up_to(&mut f, &mut h).map_err(BuildError::io(p, "read"))?;
        h.truncate(n);
        h
    };
    if head.starts_with(&[0x1f, 0x8b]) || (head.len() >= 262 && &head[257..262] == b"ustar") {
        return from_archive(p, head.starts_with(&[0x1f, 0x8b]));
    }

    if head.starts_with(b"MATLAB") {
        return Ok((Some((p.display().to_string(), read_bytes(p)?)), None));
    }
    if let Some(cause) = crate::read::likely_cause(&head) {
        // compressed some other way, or binary: neither a devkit nor its text file
        if !head.starts_with("\u{feff}".as_bytes()) {
            return Err(BuildError::Input(format!(
                "the devkit {}: not a devkit archive, folder, meta.mat or ground truth: {cause}",
                p.display()
            )));
        }
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
    // Every member of the gzip stream (as gunzip reads a concatenated file), and each
    // one's CRC-32 and length checked: read to the end below.
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
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
            let text = text_of(bytes).map_err(|why| bad(format!("member {name}: {why}")))?;
            truth = Some((shown, text));
        }
    }
    // The tar ends at its end-of-archive block, before the gzip trailer: read on to the
    // end so the trailer's CRC-32 and length are checked (a flipped bit anywhere in the
    // compressed stream must not relabel val images silently).
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| {
        bad(format!(
            "a damaged {} (read to its end after member {}): {}",
            if gz { "gzip stream" } else { "archive" },
            if last.is_empty() { "none" } else { &last },
            io_words(&e)
        ))
    })?;
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
    let mut wnids: HashMap<String, u32> = HashMap::new();
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
        if wnid.is_empty() {
            return Err(at("WNID is empty"));
        }
        // Two IDs of one WNID would give one class two labels' images.
        if let Some(other) = wnids.insert(wnid.to_string(), id) {
            return Err(at(&format!(
                "WNID {wnid} appears twice (ILSVRC2012_IDs {other} and {id})"
            )));
        }
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
    // Line n labels image n: an empty line is allowed only at the end, where it
    // shifts nothing.
    let lines: Vec<&str> = text.lines().collect();
    let used = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    for (n, line) in lines[..used].iter().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            return Err(BuildError::Input(format!(
                "{name}: line {} is empty: line n labels val image n, so no line may be \
                 missing",
                n + 1
            )));
        }
        let id: u32 = line.parse().map_err(|_| {
            BuildError::Input(format!(
                "{name}: line {}: {} is not an ILSVRC2012_ID",
                n + 1,
                quote(line, 40)
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
    use crate::mat::{Field, write_struct_column};

    /// meta.mat with leaves `(id, wnid)`.
    fn meta(leaves: &[(u32, &str)]) -> Vec<u8> {
        let rows: Vec<Vec<Field>> = leaves
            .iter()
            .map(|&(id, wnid)| {
                vec![
                    Field::Number(f64::from(id)),
                    Field::Text(wnid.into()),
                    Field::Text(format!("class {wnid}")),
                    Field::Number(0.0),
                ]
            })
            .collect();
        write_struct_column(
            "synsets",
            &["ILSVRC2012_ID", "WNID", "words", "num_children"],
            &rows,
        )
    }

    /// A devkit `.tar.gz` holding `meta` and `truth`.
    fn devkit_gz(meta: &[u8], truth: &str) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in [
            ("ILSVRC2012_devkit_t12/data/meta.mat", meta),
            (
                "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
                truth.as_bytes(),
            ),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, bytes).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    fn load(bytes: &[u8]) -> Result<Devkit, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("devkit.tar.gz");
        std::fs::write(&p, bytes).unwrap();
        Devkit::load(&[p])
            .map(Option::unwrap)
            .map_err(|e| e.to_string())
    }

    /// Issue 26, item 8: the gzip trailer's CRC-32 and length are checked; a flipped
    /// bit in either (or in the stream) is an error, never a silent relabelling.
    #[test]
    fn a_devkit_archive_is_read_to_its_gzip_trailer() {
        let good = devkit_gz(&meta(&[(1, "n01"), (2, "n02")]), "2\n1\n");
        assert!(load(&good).unwrap().has_ground_truth());
        let n = good.len();
        for (at, what) in [(n - 8, "CRC"), (n - 2, "length")] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            let err = load(&bad).unwrap_err();
            assert!(err.contains("damaged gzip stream"), "{what}: {err}");
        }
        // cut inside the trailer
        let err = load(&good[..n - 3]).unwrap_err();
        assert!(err.contains("devkit.tar.gz"), "{err}");
    }

    /// Issue 26, item 10: one WNID under two IDs would give one class two labels.
    #[test]
    fn a_wnid_twice_in_meta_mat_is_refused() {
        let err = parse_meta(&meta(&[(1, "n01"), (2, "n02"), (3, "n01")])).unwrap_err();
        assert!(
            err.contains("WNID n01 appears twice") && err.contains("1 and 3"),
            "{err}"
        );
        assert!(parse_meta(&meta(&[(1, "n01"), (2, "n02")])).is_ok());
    }

    fn val(kit: &Devkit, files: &[&str]) -> Result<HashMap<String, String>, String> {
        kit.val_labels(files.iter().copied())
            .map(|(l, _)| l)
            .map_err(|e| e.to_string())
    }

    /// Issue 26, item 11: line n labels image n; a file without its line, a line
    /// without its file, or a number given twice is an error naming both.
    #[test]
    fn every_ground_truth_line_matches_its_own_image() {
        let truth: String = (0..20).map(|i| format!("{}\n", 1 + i % 2)).collect();
        let kit = load(&devkit_gz(&meta(&[(1, "n01"), (2, "n02")]), &truth)).unwrap();
        let names: Vec<String> = (1..=20)
            .map(|n| format!("ILSVRC2012_val_{n:08}.JPEG"))
            .collect();
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let labels = val(&kit, &all).unwrap();
        assert_eq!(labels["ILSVRC2012_val_00000001"], "n01");
        assert_eq!(labels["ILSVRC2012_val_00000002"], "n02");
        // image 5 missing, image 21 present: same count, wrong images
        let mut swapped = all.clone();
        swapped[4] = "ILSVRC2012_val_00000021.JPEG";
        let err = val(&kit, &swapped).unwrap_err();
        assert!(
            err.contains("line 5") && err.contains("ILSVRC2012_val_00000005"),
            "{err}"
        );
        assert!(
            err.contains("ILSVRC2012_val_00000021.JPEG has no line"),
            "{err}"
        );
        // a second file of one number (another extension), one image left out
        let mut twice = all.clone();
        twice[19] = "ILSVRC2012_val_00000001.png";
        let err = val(&kit, &twice).unwrap_err();
        assert!(
            err.contains("ILSVRC2012_val_00000001.JPEG and ILSVRC2012_val_00000001.png"),
            "{err}"
        );
        // an image missing, nothing added
        let err = val(&kit, &all[1..]).unwrap_err();
        assert!(err.contains("line 1 of"), "{err}");
        // other files are not val images and do not count
        let mut other = all.clone();
        other.push("README.txt");
        assert_eq!(val(&kit, &other).unwrap().len(), 20);
    }

    /// An empty line in the middle would shift every label after it.
    #[test]
    fn ground_truth_lines_are_never_skipped() {
        let classes = parse_meta(&meta(&[(1, "n01"), (2, "n02")])).unwrap();
        let err = parse_truth("gt", "1\n\n2\n", &classes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2 is empty"), "{err}");
        assert_eq!(parse_truth("gt", "1\n2\n\n\n", &classes).unwrap(), [1, 2]);
        // Issue 26, item 20: what cannot be read is quoted escaped
        let err = parse_truth("gt", "1\n2\u{200b}\n", &classes)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`2\\u{200b}`"), "{err}");
    }

    /// A byte-order mark before the first line is an encoding marker, not part of it.
    #[test]
    fn a_ground_truth_with_a_byte_order_mark_reads() {
        let kit = load(&devkit_gz(
            &meta(&[(1, "n01"), (2, "n02")]),
            "\u{feff}2\n1\n",
        ))
        .unwrap();
        let labels = val(
            &kit,
            &[
                "ILSVRC2012_val_00000001.JPEG",
                "ILSVRC2012_val_00000002.JPEG",
            ],
        )
        .unwrap();
        assert_eq!(labels["ILSVRC2012_val_00000001"], "n02");
    }

    #[test]
    fn val_names_are_recognised() {
        assert_eq!(val_number("ILSVRC2012_val_00000001"), Some(1));
        assert_eq!(val_number("ILSVRC2012_val_0000001"), None);
        assert_eq!(val_number("ILSVRC2012_val_0000000x"), None);
    }
}
