//! The dataset manifest: what a dataset directory holds, read and validated.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sv_core::{CHANNELS, ClassInfo, Geometry, Split};

use crate::format::VERSION;
use crate::{Result, ShardError};

/// File name of the manifest inside a dataset directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Value of the manifest's `format` field.
pub const FORMAT_NAME: &str = "supervision-shards";
/// The largest manifest read: ImageNet's is about 100 KiB, so anything near this is
/// not a manifest.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// How a record's image is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// The pixels themselves, fixed stride: zero decode cost.
    Raw,
    /// A baseline JPEG, about 8x smaller, decoded when read.
    Jpeg,
}

/// Chroma subsampling of JPEG records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Subsampling {
    /// Full-resolution chroma; what manifests without the field hold.
    #[serde(rename = "4:4:4")]
    S444,
    /// Chroma at half resolution both ways (libjpeg's, PIL's and ImageNet's own files).
    #[default]
    #[serde(rename = "4:2:0")]
    S420,
}

impl Subsampling {
    /// As written in the manifest and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Subsampling::S444 => "4:4:4",
            Subsampling::S420 => "4:2:0",
        }
    }
}

impl std::fmt::Display for Subsampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Codec {
    pub(crate) fn code(self) -> u32 {
        match self {
            Codec::Raw => 0,
            Codec::Jpeg => 1,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<Codec> {
        match code {
            0 => Some(Codec::Raw),
            1 => Some(Codec::Jpeg),
            _ => None,
        }
    }

    /// Lowercase name, as in the manifest and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Jpeg => "jpeg",
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One shard as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the dataset directory.
    pub name: String,
    /// Records in the shard.
    pub records: u64,
    /// File length in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the whole file, 8 lowercase hex digits.
    pub crc32: String,
}

/// The dataset manifest (`manifest.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `supervision-shards`.
    pub format: String,
    /// Format version, 1.
    pub version: u32,
    /// Train or val.
    pub split: Split,
    /// Image side in pixels.
    pub side: u32,
    /// Colour channels, 3.
    #[serde(default = "default_channels")]
    pub channels: u32,
    /// Payload codec.
    pub codec: Codec,
    /// JPEG quality used when writing (jpeg codec only).
    pub jpeg_quality: Option<u8>,
    /// Chroma subsampling of JPEG records (jpeg codec only; absent in manifests written
    /// before it existed, whose records are 4:4:4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jpeg_subsampling: Option<Subsampling>,
    /// Total records over all shards.
    pub records: u64,
    /// The classes; labels index this list.
    pub classes: Vec<ClassInfo>,
    /// The shard files, in record order.
    pub shards: Vec<ShardEntry>,
    /// CRC-32 of every other field ([`Manifest::compute_checksum`]), 8 lowercase hex
    /// digits; `None` only while a manifest is being assembled (see [`Manifest::seal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

fn default_channels() -> u32 {
    CHANNELS as u32
}

impl Manifest {
    /// Geometry of the stored images.
    pub fn geometry(&self) -> Geometry {
        Geometry { side: self.side }
    }

    /// The manifest's checksum: the CRC-32 of its compact JSON (no whitespace)
    /// without the `checksum` field, fields in the order this crate's header lists.
    pub fn compute_checksum(&self) -> u32 {
        let unsealed = Manifest {
            checksum: None,
            ..self.clone()
        };
        // Plain strings and integers always serialise.
        let text = serde_json::to_vec(&unsealed).unwrap_or_default();
        crc32fast::hash(&text)
    }

    /// Set `checksum` to match the other fields (after building or editing a
    /// manifest).
    pub fn seal(&mut self) {
        self.checksum = Some(sv_core::crc32_hex(self.compute_checksum()));
    }

    /// Check `checksum` against the other fields: swapped classes, an edited shard
    /// table or any other change made after the manifest was written fail here.
    pub fn check_checksum(&self, path: &Path) -> Result<()> {
        let bad = |what: String| ShardError::Manifest {
            path: path.to_path_buf(),
            what,
        };
        let Some(stored) = &self.checksum else {
            return Err(bad(
                "it has no checksum, so its class list and shard table \
                            cannot be checked (a manifest written before checksums were \
                            added, or one whose checksum was removed): rebuild the dataset"
                    .into(),
            ));
        };
        let Some(stored_value) = sv_core::parse_crc32_hex(stored) else {
            return Err(bad(format!(
                "checksum {stored:?} is not 8 lowercase hex digits"
            )));
        };
        let computed = self.compute_checksum();
        if stored_value != computed {
            return Err(bad(format!(
                "checksum mismatch (stored {stored}, computed {}): the manifest was \
                 changed after it was written (classes, shards or settings edited or \
                 damaged)",
                sv_core::crc32_hex(computed)
            )));
        }
        Ok(())
    }

    /// Read `dir/manifest.json` and check its checksum and consistency.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = match sv_core::fs::read_regular(&path, MAX_MANIFEST_BYTES) {
            Ok(t) => t,
            Err(e) if e.is_not_found() => {
                return Err(ShardError::Manifest {
                    path,
                    what: "no manifest.json here: is this a shard dataset directory \
                           (made by `supervision shard build`)?"
                        .into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| ShardError::Manifest {
                path: path.clone(),
                what: e.to_string(),
            })?;
        manifest.check_checksum(&path)?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    /// Check the manifest's own consistency (not its checksum:
    /// [`check_checksum`](Self::check_checksum)).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| ShardError::Manifest {
            path: path.to_path_buf(),
            what,
        };
        if self.format != FORMAT_NAME {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT_NAME:?}",
                self.format
            )));
        }
        if self.version != VERSION {
            return Err(bad(format!(
                "format version {} is not supported (this build reads version {VERSION})",
                self.version
            )));
        }
        if self.side == 0 || self.side > 16384 {
            return Err(bad(format!("side {} is out of range 1..=16384", self.side)));
        }
        if self.channels != CHANNELS as u32 {
            return Err(bad(format!(
                "channels is {}, expected {CHANNELS}",
                self.channels
            )));
        }
        if self.classes.is_empty() {
            return Err(bad("the class list is empty".into()));
        }
        let mut wnids = std::collections::HashMap::new();
        for (label, c) in self.classes.iter().enumerate() {
            // A wnid is a folder name in the input tree, and part of exported file
            // names: never a path.
            let plain = !c.wnid.is_empty()
                && c.wnid != "."
                && c.wnid != ".."
                && !c.wnid.contains(['/', '\\', '\0']);
            if !plain {
                return Err(bad(format!(
                    "class {label} has wnid {:?}, which is not a plain name",
                    c.wnid
                )));
            }
            if let Some(first) = wnids.insert(c.wnid.as_str(), label) {
                return Err(bad(format!(
                    "wnid {} is listed twice in the class list (labels {first} and {label})",
                    c.wnid
                )));
            }
        }
        let sum = self
            .shards
            .iter()
            .try_fold(0u64, |total, s| total.checked_add(s.records));
        match sum {
            Some(sum) if sum == self.records => {}
            Some(sum) => {
                return Err(bad(format!(
                    "records is {} but the shards hold {sum}",
                    self.records
                )));
            }
            None => return Err(bad("the shards' record counts add up past 2^64".into())),
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.shards {
            let plain = !s.name.is_empty()
                && !s.name.starts_with('.')
                && !s.name.contains(['/', '\\'])
                && s.name != MANIFEST_FILE;
            if !plain {
                return Err(bad(format!(
                    "shard name {:?} is not a plain file name",
                    s.name
                )));
            }
            if !seen.insert(&s.name) {
                return Err(bad(format!("shard {:?} is listed twice", s.name)));
            }
            if sv_core::parse_crc32_hex(&s.crc32).is_none() {
                return Err(bad(format!(
                    "shard {:?} has crc32 {:?}, expected 8 lowercase hex digits",
                    s.name, s.crc32
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> Manifest {
        let class = |wnid: &str, name: &str| ClassInfo {
            wnid: wnid.into(),
            name: name.into(),
        };
        let shard = |name: &str, records, bytes, crc32: &str| ShardEntry {
            name: name.into(),
            records,
            bytes,
            crc32: crc32.into(),
        };
        Manifest {
            format: FORMAT_NAME.into(),
            version: VERSION,
            split: Split::Val,
            side: 256,
            channels: 3,
            codec: Codec::Jpeg,
            jpeg_quality: Some(90),
            jpeg_subsampling: None,
            records: 7,
            classes: vec![
                class("n01440764", "tench, Tinca tinca"),
                class("n02", "caf\u{e9} \"quoted\" \\ back\tslash/\u{1}"),
            ],
            shards: vec![
                shard("val-00000.svs", 5, 123_456, "0badf00d"),
                shard("val-00001.svs", 2, 9_999, "ffffffff"),
            ],
            checksum: None,
        }
    }

    #[test]
    fn checksum_matches_an_independent_computation() {
        // Python: m = the object above, fields in this order, without "checksum";
        // "%08x" % zlib.crc32(json.dumps(m, separators=(",", ":"),
        //                                ensure_ascii=False).encode())
        let mut m = example();
        assert_eq!(sv_core::crc32_hex(m.compute_checksum()), "727c14fa");
        m.seal();
        assert_eq!(m.checksum.as_deref(), Some("727c14fa"));
        // The checksum does not cover itself: sealing twice changes nothing.
        m.seal();
        assert_eq!(m.checksum.as_deref(), Some("727c14fa"));
        m.check_checksum(Path::new("m.json")).unwrap();
        // Written at the end, after the shard table.
        let text = serde_json::to_string_pretty(&m).unwrap();
        assert!(
            text.trim_end().ends_with("\"checksum\": \"727c14fa\"\n}"),
            "{text}"
        );
    }

    #[test]
    fn any_change_breaks_the_checksum() {
        type Edit = fn(&mut Manifest);
        let edits: &[Edit] = &[
            |m| m.classes.swap(0, 1),
            |m| m.classes[1].name.push(' '),
            |m| m.classes[0].wnid = "n01440765".into(),
            |m| drop(m.classes.pop()),
            |m| m.shards.swap(0, 1),
            |m| m.shards[0].records += 1,
            |m| m.shards[1].crc32 = "fffffffe".into(),
            |m| m.split = Split::Train,
            |m| m.jpeg_quality = Some(91),
            |m| m.records = 8,
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut m = example();
            m.seal();
            edit(&mut m);
            let err = m.check_checksum(Path::new("m.json")).unwrap_err();
            assert!(
                err.to_string().contains("checksum mismatch"),
                "edit {i}: {err}"
            );
        }
    }

    #[test]
    fn checksum_text_is_strict_and_required() {
        let mut m = example();
        let err = m.check_checksum(Path::new("m.json")).unwrap_err();
        assert!(err.to_string().contains("has no checksum"), "{err}");
        for bad in ["+27c14fa", "727C14FA", "0x7c14fa", " 727c14f", "727c14fa0"] {
            m.checksum = Some(bad.into());
            let err = m.check_checksum(Path::new("m.json")).unwrap_err();
            assert!(
                err.to_string().contains("not 8 lowercase hex digits"),
                "{bad}: {err}"
            );
        }
    }
}
