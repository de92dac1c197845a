//! sv-tensorboard: scalar event files that TensorBoard reads (`tensorboard --logdir`),
//! written without TensorFlow, protobuf code generation or libtorch.
//!
//! An event file is named `events.out.tfevents.<unix seconds>.<host>.<pid>.<n>` (the
//! `tfevents` part is what TensorBoard looks for) and is a sequence of TFRecords:
//!
//! ```text
//! u64 little-endian   length of the payload
//! u32 little-endian   masked CRC-32C of those 8 length bytes
//! [length bytes]      payload: one serialized `tensorboard.Event` protobuf
//! u32 little-endian   masked CRC-32C of the payload
//! masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8   (wrapping, 32 bit)
//! ```
//!
//! The payloads use these fields of TensorBoard's `event.proto` and `summary.proto`
//! (field number, protobuf wire type):
//!
//! ```text
//! Event       wall_time 1 (double)   step 2 (int64)   file_version 3 (string)
//!             summary 5 (Summary)    session_log 7 (SessionLog)
//! Summary     value 1 (repeated Value)
//! Value       tag 1 (string)         simple_value 2 (float)
//! SessionLog  status 1 (enum: START = 1)
//! ```
//!
//! The first record of a file is the `file_version: "brain.Event:2"` event. A
//! `SessionLog START` at step s tells TensorBoard that a run restarted there (resumed
//! from a checkpoint), so it drops the points at steps >= s written before the restart.
//!
//! Why by hand: the only TensorBoard writer on crates.io (tensorboard-rs) has had no
//! release since 2022, its repository says it is inactive, and it pulls in protobuf 2
//! and image 0.23. Three messages of a stable format need a varint and a length
//! prefix; `tests/reader.rs` checks the files with TensorBoard's own reader and its
//! own protobuf classes.
#![warn(missing_docs)]

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// What can go wrong while writing an event file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating, writing or flushing the file (or its folder) failed.
    #[error("cannot {op} {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done ("create", "write", "flush").
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The file version TensorBoard expects in the first record.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Appends events to a new event file in one folder (a TensorBoard "run").
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it (never an existing one), and
    /// writes the file-version record.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.into(),
            op: "create",
            source,
        })?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "events.out.tfevents.{secs:010}.{}.{}.{}",
            hostname(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| Error::Io {
                path: path.clone(),
                op: "create",
                source,
            })?;
        let mut w = EventWriter {
            file: BufWriter::new(file),
            path,
        };
        let mut event = Vec::new();
        event_header(&mut event, wall_time(), 0);
        put_bytes(&mut event, 3, FILE_VERSION.as_bytes());
        w.record(&event)?;
        w.flush()?;
        Ok(w)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One event at `step` holding the scalar `(tag, value)` pairs (TensorBoard draws
    /// one chart per tag, step on the x axis). Buffered: call [`EventWriter::flush`]
    /// for TensorBoard to see it.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f32)]) -> Result<()> {
        let mut summary = Vec::new();
        let mut value = Vec::new();
        for (tag, v) in values {
            value.clear();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_key(&mut value, 2, WIRE_FIXED32);
            value.extend_from_slice(&v.to_le_bytes());
            put_bytes(&mut summary, 1, &value);
        }
        let mut event = Vec::new();
        event_header(&mut event, wall_time(), step);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    /// Marks a (re)start of the run at `step`: TensorBoard discards the points at this
    /// step and later that earlier files recorded (a run resumed from a checkpoint
    /// older than its last logged step).
    pub fn session_start(&mut self, step: i64) -> Result<()> {
        let mut log = Vec::new();
        put_key(&mut log, 1, WIRE_VARINT);
        put_varint(&mut log, 1); // SessionLog.START
        let mut event = Vec::new();
        event_header(&mut event, wall_time(), step);
        put_bytes(&mut event, 7, &log);
        self.record(&event)
    }

    /// Writes buffered events to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().map_err(|source| Error::Io {
            path: self.path.clone(),
            op: "flush",
            source,
        })
    }

    fn record(&mut self, payload: &[u8]) -> Result<()> {
        let framed = frame(payload);
        self.file.write_all(&framed).map_err(|source| Error::Io {
            path: self.path.clone(),
            op: "write",
            source,
        })
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Errors here have nowhere to go; `flush` reports them to callers who care.
        let _ = self.file.flush();
    }
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    // Keep the file name one path component of plain characters.
    let clean: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// TFRecord's CRC mask (it keeps a CRC of data that holds CRCs from looking like one).
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the payload, its masked CRC.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Event.wall_time and Event.step (int64: negative steps are ten-byte varints, as
/// protobuf writes them).
fn event_header(out: &mut Vec<u8>, wall_time: f64, step: i64) {
    put_key(out, 1, WIRE_FIXED64);
    out.extend_from_slice(&wall_time.to_le_bytes());
    if step != 0 {
        put_key(out, 2, WIRE_VARINT);
        put_varint(out, step as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_the_published_values() {
        // The catalogued check value of CRC-32C (Castagnoli), over "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8, worked out by hand.
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn varints_as_protobuf_writes_them() {
        let enc = |v: u64| {
            let mut o = Vec::new();
            put_varint(&mut o, v);
            o
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(1), [1]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
    }

    #[test]
    fn a_record_frames_its_payload() {
        let r = frame(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), 3);
        assert_eq!(
            u32::from_le_bytes(r[8..12].try_into().unwrap()),
            masked_crc32c(&3u64.to_le_bytes())
        );
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(
            u32::from_le_bytes(r[15..].try_into().unwrap()),
            masked_crc32c(b"abc")
        );
    }

    #[test]
    fn files_are_new_and_start_with_the_version_record() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventWriter::create(&dir.path().join("tb")).unwrap();
        let b = EventWriter::create(&dir.path().join("tb")).unwrap();
        assert_ne!(a.path(), b.path());
        let name = a.path().file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let bytes = std::fs::read(a.path()).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), 16 + len);
        let payload = &bytes[12..12 + len];
        assert!(payload.ends_with(FILE_VERSION.as_bytes()));
    }
}
