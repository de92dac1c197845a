//! SuperVision's shard format, version 1: the on-disk form of a prepared dataset.
//!
//! A dataset is a directory holding `manifest.json` and shard files of bounded size
//! (about 1 GiB each by default). Every image is stored as a square `side x side` RGB
//! record (`side` is 256 unless chosen otherwise) with its class label.
//!
//! # Manifest (`manifest.json`)
//!
//! ```json
//! { "format": "supervision-shards", "version": 1, "split": "train", "side": 256,
//!   "channels": 3, "codec": "raw", "jpeg_quality": null, "records": 1281167,
//!   "classes": [{"wnid": "n01440764", "name": "tench, Tinca tinca"}, ...],
//!   "shards": [{"name": "train-00000.svs", "records": 5461, "bytes": 1073811560,
//!               "crc32": "9f0c1a2b"}, ...],
//!   "checksum": "3e8a7c01" }
//! ```
//!
//! Records are numbered across the dataset in shard order: the first record of shard
//! `s` has the index `sum(records of shards 0..s)`. Labels index `classes`. `crc32` is
//! the CRC-32 (IEEE) of the whole shard file. `checksum` is the CRC-32 of the
//! manifest's other fields: of their compact JSON (no whitespace, the fields in the
//! order shown, `jpeg_quality` written even when `null`), as Python computes it with
//! `zlib.crc32(json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode())`
//! for `m` the manifest without `checksum`. Both are exactly 8 lowercase hex digits,
//! read strictly. A manifest without `checksum`, or whose checksum does not match
//! (swapped classes, an edited shard table), is refused: a class list that cannot be
//! checked could shift every label silently.
//!
//! # Shard file (`<split>-<NNNNN>.svs`), all integers little-endian
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SVSHARD\0` |
//! | 8 | 4 | format version, `1` |
//! | 12 | 4 | codec: `0` raw, `1` jpeg |
//! | 16 | 4 | side (pixels) |
//! | 20 | 4 | channels, `3` |
//! | 24 | 8 | record count `n` |
//! | 32 | 8 | data offset, `4096` |
//! | 40 | 8 | index offset `x` |
//! | 48 | 4 | index entry size, `24` |
//! | 52 | 4 | CRC-32 of the index region |
//! | 56 | 4 | CRC-32 of bytes 0..56 |
//! | 60 | 4036 | zero |
//! | 4096 | `x - 4096` | data region: the record payloads, back to back in record order |
//! | `x` | `24 n` | index: one entry per record |
//!
//! The file ends exactly at `x + 24 n`. An index entry is
//! `offset u64, length u32, label u32, crc32 u32, reserved u32 (0)`: the payload is
//! bytes `offset .. offset + length` of the file, lying inside the data region, and
//! `crc32` is the CRC-32 of those bytes.
//!
//! Payloads: `raw` is the image itself, `side * side * 3` bytes of interleaved RGB
//! (row-major, HWC), and its records are contiguous: record `i` starts at
//! `4096 + i * side * side * 3`, so a raw shard can also be read as a plain array
//! (`numpy.memmap(path, uint8, offset=4096, shape=(n, side, side, 3))`). `jpeg` is a
//! baseline JPEG of the same image, decoded to RGB when read; the manifest's
//! `jpeg_subsampling` (`"4:2:0"` or `"4:4:4"`, jpeg codec only) says how its chroma was
//! stored, and a jpeg manifest without it (written before the field existed) holds
//! 4:4:4 records.
//!
//! # Invariants the reader enforces before it touches a byte
//!
//! - The manifest and every shard are regular files (a FIFO, device or directory in
//!   their place is an error, never a wait), and the manifest's checksum holds.
//! - The file's length equals the manifest's `bytes` and the header's `x + 24 n`.
//! - Header CRC, magic, version, codec, side and count agree with the manifest.
//! - The index CRC holds, and every entry lies in the data region (raw: at its fixed
//!   place, with the fixed length); every label is below the class count.
//! - All of the above is read with plain reads before the file is memory-mapped,
//!   and after mapping the path is checked to still name the same file, of the same
//!   length. A map of a file that is later truncated raises SIGBUS when the lost
//!   pages are read: shard files are never changed in place by this project (they
//!   are renamed into place once complete), so only another program truncating a
//!   shard under a running reader can cause it. [`verify::verify_dataset`] does not
//!   map shards at all, so it reports such a change instead, and
//!   [`report_truncated_shards`] lets a binary turn the SIGBUS into a message naming
//!   the shard.
//! - Record CRCs are checked by [`Record::verify`] and by [`verify::verify_dataset`].
//!
//! # Writing
//!
//! Shards and the manifest are written with [`sv_core::fs::AtomicFile`]: under a
//! temporary name (`.<name>.<pid>.<n>.tmp`), synced, renamed to the final name, and
//! the folder synced, so a name in the directory is always a complete file, and a
//! failed or abandoned write removes its temporary file. Output is a pure function of
//! the records pushed, so equal input gives byte-identical datasets.
#![warn(missing_docs)]

mod error;
mod format;
mod manifest;
mod reader;
mod sigbus;
pub mod verify;
mod writer;

pub use error::ShardError;
pub use format::{DATA_OFFSET, INDEX_ENTRY_SIZE, MAGIC, VERSION};
pub use manifest::{Codec, MANIFEST_FILE, MAX_MANIFEST_BYTES, Manifest, ShardEntry, Subsampling};
pub use reader::{Dataset, Record, ShardReader};
pub use sigbus::report_truncated_shards;
pub use writer::{
    DEFAULT_MAX_SHARD_BYTES, DatasetWriter, ShardWriter, WriterConfig, encode_payload,
    write_manifest,
};

/// Result with this crate's error.
pub type Result<T, E = ShardError> = std::result::Result<T, E>;
