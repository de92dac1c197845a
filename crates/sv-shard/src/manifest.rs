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
    /// CRC-32 (IEEE) of the whole file, lowercase hex.
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
}

fn default_channels() -> u32 {
    CHANNELS as u32
}

impl Manifest {
    /// Geometry of the stored images.
    pub fn geometry(&self) -> Geometry {
        Geometry { side: self.side }
    }

    /// Read and validate `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ShardError::Manifest {
                    path,
                    what: "no manifest.json here: is this a shard dataset directory \
                           (made by `supervision shard build`)?"
                        .into(),
                });
            }
            Err(e) => return Err(ShardError::io(path, "read", e)),
        };
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| ShardError::Manifest {
                path: path.clone(),
                what: e.to_string(),
            })?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    /// Check the manifest's own consistency.
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
        let sum: u64 = self.shards.iter().map(|s| s.records).sum();
        if sum != self.records {
            return Err(bad(format!(
                "records is {} but the shards hold {sum}",
                self.records
            )));
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
            if u32::from_str_radix(&s.crc32, 16).is_err() || s.crc32.len() != 8 {
                return Err(bad(format!(
                    "shard {:?} has crc32 {:?}, expected 8 hex digits",
                    s.name, s.crc32
                )));
            }
        }
        Ok(())
    }
}
