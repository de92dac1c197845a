//! WebDataset tars: the members of a sample share a key, the member path up to the
//! first dot of its file name (`n01440764/n01440764_10026.jpg` and `.cls` are sample
//! `n01440764/n01440764_10026`), and follow each other in the tar, as WebDataset's
//! `TarWriter` writes them and its readers group them.
//!
//! A tar is indexed from its headers: image data is seeked over (never read here),
//! and only label members (`.cls`, or `--label-key`, and `.json`) are read, each at
//! most [`MAX_LABEL_BYTES`]. A member whose data would end past the end of the file
//! (a truncated file, or a header declaring a size the file does not have) or a tar
//! without its end-of-archive block is an error naming the file and the member.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{FileListing, HubFile, RawLabel, Sample};
use crate::BuildError;
use crate::read::{io_words, open_regular};

/// The largest label member read (`.cls` is a few bytes; `.json` a few hundred).
pub const MAX_LABEL_BYTES: u64 = 1 << 20;

/// Image extensions, in the order one is chosen when a sample holds several.
const IMAGE_EXTS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "ppm", "pgm", "pnm", "bmp", "gif", "tif", "tiff",
];

/// Whether the first members of the tar at `path` include a label member or `.json`
/// (WebDataset), as ILSVRC2012's tars never do.
pub(super) fn looks_like_wds(path: &Path, label_key: &str) -> Result<bool, BuildError> {
    let (file, _) = open_regular(path)
        .map_err(|reason| BuildError::Input(format!("{}: {reason}", path.display())))?;
    let mut tar = tar::Archive::new(&file);
    let Ok(entries) = tar.entries_with_seek() else {
        return Ok(false);
    };
    for e in entries.take(64) {
        let Ok(e) = e else { return Ok(false) };
        let raw = e.path_bytes().into_owned();
        if let Some((_, ext)) = split_key(&raw)
            && (ext == label_key || ext == "json" || ext == "cls")
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `(key, extension)` of a member path as WebDataset splits it: the key is the path
/// up to the first dot of the file name, the extension the rest, lower-cased. `None`
/// for a name without a dot.
fn split_key(raw: &[u8]) -> Option<(Vec<u8>, String)> {
    let base_at = raw.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
    let dot = raw[base_at..].iter().position(|&b| b == b'.')? + base_at;
    if dot == base_at {
        return None; // a hidden name, `.foo`
    }
    let ext = String::from_utf8_lossy(&raw[dot + 1..]).to_lowercase();
    Some((raw[..dot].to_vec(), ext))
}

/// One member of the sample being gathered.
struct Member {
    name: String,
    ext: String,
    pos: u64,
    size: u64,
    /// The bytes of a label member.
    data: Option<Result<Vec<u8>, String>>,
}

/// Index `f`: its samples, with their labels as written.
pub(super) fn list(f: &HubFile, label_key: &str) -> Result<FileListing, BuildError> {
    let path = &f.path;
    let bad = |what: String| BuildError::Input(format!("{}: {what}", path.display()));
    let (file, len) = open_regular(path).map_err(bad)?;
    if len == 0 {
        return Err(bad("an empty file, not a tar archive".into()));
    }
    let mut out = FileListing {
        samples: Vec::new(),
        rejects: Vec::new(),
        ignored: Vec::new(),
        class_names: None,
        image_column: None,
    };
    let mut group = Group {
        key: Vec::new(),
        members: Vec::new(),
        seen: HashSet::new(),
        label_key,
    };
    let mut tar = tar::Archive::new(&file);
    let entries = tar
        .entries_with_seek()
        .map_err(|e| bad(format!("not a tar archive: {}", io_words(&e))))?;
    let mut last = String::new();
    let mut end = 0u64;
    let mut count = 0usize;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            bad(if last.is_empty() {
                format!("not a valid tar archive: {e}")
            } else {
                format!("not a valid tar archive after member {last}: {e}")
            })
        })?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let pos = entry.raw_file_position();
        let size = entry.size();
        let data_end = pos.checked_add(size).filter(|&e| e <= len).ok_or_else(|| {
            bad(format!(
                "member {name} declares {size} bytes, which end past the end of the file \
                 ({len} bytes): the file is truncated or damaged"
            ))
        })?;
        end = data_end.div_ceil(512) * 512;
        count += 1;
        last = name.clone();
        let t = entry.header().entry_type();
        if t.is_dir() {
            out.ignored
                .push((name, "a directory entry (samples are its files)".into()));
            continue;
        }
        if !(t.is_file() || t.is_contiguous()) {
            group.flush(&mut out);
            out.rejects
                .push((name, "not a regular file entry (a link or a device)".into()));
            continue;
        }
        if raw.starts_with(b"/") || raw.split(|&b| b == b'/').any(|c| c == b"..") {
            out.rejects.push((
                name,
                "a path that leaves the archive (absolute or `..`)".into(),
            ));
            continue;
        }
        let Some((key, ext)) = split_key(&raw) else {
            out.ignored.push((
                name,
                "not part of a sample (no extension after the key)".into(),
            ));
            continue;
        };
        if key != group.key {
            group.flush(&mut out);
            group.key = key;
        }
        let data = (ext == label_key || ext == "json").then(|| {
            if size > MAX_LABEL_BYTES {
                return Err(format!(
                    "is {size} bytes, more than the {} KiB read for a label",
                    MAX_LABEL_BYTES >> 10
                ));
            }
            let mut buf = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(size)
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot be read: {}", io_words(&e)))?;
            Ok(buf)
        });
        group.members.push(Member {
            name,
            ext,
            pos,
            size,
            data,
        });
    }
    group.flush(&mut out);
    // tar's end-of-archive marker is a zero block: a file cut at a member boundary
    // would otherwise read as a complete, shorter tar.
    let mut block = [0u8; 512];
    let marked = end + 512 <= len
        && crate::archive::read_exact_at(&file, &mut block, end).is_ok()
        && block.iter().all(|&b| b == 0);
    if !marked {
        return Err(bad(if count == 0 {
            "not a tar archive (no member and no end-of-archive block)".into()
        } else {
            format!(
                "the tar ends after member {last} without tar's end-of-archive block: it is \
                 truncated"
            )
        }));
    }
    Ok(out)
}

/// The members of the sample being read, and the keys already done.
struct Group<'a> {
    key: Vec<u8>,
    members: Vec<Member>,
    seen: HashSet<Vec<u8>>,
    label_key: &'a str,
}

impl Group<'_> {
    /// Turn the gathered members into a sample or a reject.
    fn flush(&mut self, out: &mut FileListing) {
        let members = std::mem::take(&mut self.members);
        if members.is_empty() {
            return;
        }
        let key = String::from_utf8_lossy(&self.key).into_owned();
        let first = members[0].name.clone();
        if !self.seen.insert(self.key.clone()) {
            out.rejects.push((
                first,
                format!(
                    "sample {key} appears again (a duplicate key: its members are not \
                     together in the tar); this later copy is not used"
                ),
            ));
            return;
        }
        let mut by_ext: HashMap<&str, &Member> = HashMap::new();
        for m in &members {
            if by_ext.insert(m.ext.as_str(), m).is_some() {
                out.rejects.push((
                    m.name.clone(),
                    format!("sample {key} holds two .{} members", m.ext),
                ));
                return;
            }
        }
        let image = IMAGE_EXTS.iter().find_map(|e| by_ext.get(e).copied());
        let Some(image) = image else {
            let exts: Vec<String> = members.iter().map(|m| format!(".{}", m.ext)).collect();
            out.rejects.push((
                first,
                format!(
                    "sample {key} has no image member (it holds {})",
                    exts.join(", ")
                ),
            ));
            return;
        };
        match label(&key, &by_ext, self.label_key) {
            Ok(label) => out.samples.push(Sample {
                path: PathBuf::from(&image.name),
                shown: image.name.clone(),
                label,
                size: image.size,
                offset: image.pos,
            }),
            Err(why) => out.rejects.push((image.name.clone(), why)),
        }
    }
}

/// The label of sample `key`: member `.{label_key}` as text, else field `label_key`
/// of its `.json`.
fn label(key: &str, by_ext: &HashMap<&str, &Member>, label_key: &str) -> Result<RawLabel, String> {
    if let Some(m) = by_ext.get(label_key) {
        let bytes = match &m.data {
            Some(Ok(b)) => b,
            Some(Err(why)) => return Err(format!("its label member {} {why}", m.name)),
            None => return Err(format!("internal error: {} was not read", m.name)),
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|_| format!("its label member {} is not text", m.name))?
            .trim();
        return parse_label(text).ok_or_else(|| {
            format!(
                "its label member {} holds `{}`, not a class index",
                m.name,
                text.chars().take(40).collect::<String>()
            )
        });
    }
    if let Some(m) = by_ext.get("json")
        && let Some(Ok(bytes)) = &m.data
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(field) = v.get(label_key)
    {
        return match field {
            serde_json::Value::Number(n) => n.as_i64().map(RawLabel::Index),
            serde_json::Value::String(s) => parse_label(s.trim()),
            _ => None,
        }
        .ok_or_else(|| {
            format!(
                "field `{label_key}` of {} is `{field}`, not a class index",
                m.name
            )
        });
    }
    Err(format!(
        "sample {key} has no label: no .{label_key} member, and no `{label_key}` field in a \
         .json member"
    ))
}

/// A label as text: a whole number is a class index; a plain word (`n01440764`) a
/// wnid to look up; anything else is not a label.
fn parse_label(text: &str) -> Option<RawLabel> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(RawLabel::Index(i));
    }
    let word = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (word && !text.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
        .then(|| RawLabel::Name(text.to_string()))
        .filter(|_| text.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(
            split_key(b"dir.x/n1_10.seg.png").unwrap(),
            (b"dir.x/n1_10".to_vec(), "seg.png".into())
        );
        assert_eq!(split_key(b"a.JPG").unwrap().1, "jpg");
        assert!(split_key(b"noext").is_none());
        assert!(split_key(b"d/.hidden").is_none());
    }

    #[test]
    fn labels_are_numbers_or_wnids() {
        assert!(matches!(parse_label("17"), Some(RawLabel::Index(17))));
        assert!(matches!(parse_label("-1"), Some(RawLabel::Index(-1))));
        assert!(matches!(parse_label("n01440764"), Some(RawLabel::Name(_))));
        assert!(parse_label("seven and a half").is_none());
        assert!(parse_label("1.5").is_none());
        assert!(parse_label("").is_none());
    }
}
