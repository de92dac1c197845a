//! Writing shards and manifests through [`sv_core::fs::AtomicFile`] (temporary name,
//! sync, rename, folder sync), so a final name only ever holds a complete file and a
//! failed write leaves no temporary file behind.

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sv_core::fs::AtomicFile;
use sv_core::{ClassInfo, Geometry, Split};

use crate::format::{DATA_OFFSET, Header, INDEX_ENTRY_SIZE, IndexEntry, VERSION};
use crate::manifest::{Codec, FORMAT_NAME, MANIFEST_FILE, Manifest, ShardEntry, Subsampling};
use crate::{Result, ShardError};

/// Default bound on a shard file's size: 1 GiB.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 1 << 30;

/// Encode one image (`side x side x 3` HWC RGB) as a record payload of `config`'s
/// codec into `out` (cleared first).
pub fn encode_payload(config: &WriterConfig, pixels: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let side = config.side;
    let want = Geometry { side }.image_bytes();
    if pixels.len() != want {
        return Err(ShardError::Invalid(format!(
            "image buffer is {} bytes, expected {want} ({side}x{side}x3)",
            pixels.len()
        )));
    }
    out.clear();
    match config.codec {
        Codec::Raw => out.extend_from_slice(pixels),
        Codec::Jpeg => {
            use jpeg_encoder::{ChromaSubsamplingMethod, SamplingFactor};
            let side16 = u16::try_from(side)
                .map_err(|_| ShardError::Invalid(format!("side {side} is too large for JPEG")))?;
            let mut encoder =
                jpeg_encoder::Encoder::new(&mut *out, config.jpeg_quality.clamp(1, 100));
            encoder.set_sampling_factor(match config.jpeg_subsampling {
                Subsampling::S444 => SamplingFactor::F_1_1,
                Subsampling::S420 => SamplingFactor::F_2_2,
            });
            // Each chroma sample the mean of its 2x2 pixels, as libjpeg (the encoder's
            // default takes the top-left pixel).
            encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
            encoder
                .encode(pixels, side16, side16, jpeg_encoder::ColorType::Rgb)
                .map_err(|e| ShardError::Invalid(format!("JPEG encoding failed: {e}")))?;
        }
    }
    Ok(())
}

/// Writes one shard file.
pub struct ShardWriter {
    name: String,
    tmp: PathBuf,
    out: BufWriter<AtomicFile>,
    codec: Codec,
    side: u32,
    entries: Vec<IndexEntry>,
    data_crc: crc32fast::Hasher,
    pos: u64,
    /// Where the next background write-back request starts.
    writeback_from: u64,
}

/// The shard file's write buffer. Raw records (192 KiB at side 256) are larger and go
/// to the file without a copy through it; small JPEG records are gathered.
const WRITE_BUFFER: usize = 64 << 10;
/// Background write-back is requested each time this much more has been written.
const WRITEBACK_STEP: u64 = 8 << 20;

impl ShardWriter {
    /// Start `dir/<name>` (written under a temporary name until
    /// [`finish`](Self::finish); dropped unfinished, it removes its temporary file).
    pub fn create(dir: &Path, name: &str, codec: Codec, side: u32) -> Result<ShardWriter> {
        let file = AtomicFile::create(dir.join(name))?;
        let tmp = file.temp_path().to_path_buf();
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        out.write_all(&[0u8; DATA_OFFSET as usize])
            .map_err(|e| ShardError::io(&tmp, "write", e))?;
        Ok(ShardWriter {
            name: name.to_string(),
            tmp,
            out,
            codec,
            side,
            entries: Vec::new(),
            data_crc: crc32fast::Hasher::new(),
            pos: DATA_OFFSET,
            writeback_from: 0,
        })
    }

    /// Records written so far.
    pub fn records(&self) -> usize {
        self.entries.len()
    }

    /// File size if a payload of `len` bytes were added now.
    pub fn size_with(&self, len: usize) -> u64 {
        self.pos + len as u64 + ((self.entries.len() + 1) * INDEX_ENTRY_SIZE) as u64
    }

    /// Append one encoded payload.
    pub fn push(&mut self, label: u32, payload: &[u8]) -> Result<()> {
        let len = u32::try_from(payload.len()).map_err(|_| {
            ShardError::Invalid(format!("payload of {} bytes is too large", payload.len()))
        })?;
        if self.codec == Codec::Raw && payload.len() != (Geometry { side: self.side }).image_bytes()
        {
            return Err(ShardError::Invalid(format!(
                "raw payload is {} bytes, expected {}",
                payload.len(),
                Geometry { side: self.side }.image_bytes()
            )));
        }
        self.out
            .write_all(payload)
            .map_err(|e| ShardError::io(&self.tmp, "write", e))?;
        // One pass over the payload: its own CRC, folded into the data's.
        let mut crc = crc32fast::Hasher::new();
        crc.update(payload);
        self.data_crc.combine(&crc);
        self.entries.push(IndexEntry {
            offset: self.pos,
            len,
            label,
            crc: crc.finalize(),
        });
        self.pos += u64::from(len);
        // Start the disk writing what the buffer has passed on, a few MiB at a time,
        // so the sync at the end waits for the last few MiB rather than the shard.
        let written = self.pos.saturating_sub(WRITE_BUFFER as u64);
        if written >= self.writeback_from + WRITEBACK_STEP {
            self.out.get_ref().start_writeback(self.writeback_from);
            self.writeback_from = written;
        }
        Ok(())
    }

    /// Write the index and header, sync, and rename to the final name.
    pub fn finish(mut self) -> Result<ShardEntry> {
        let mut index = Vec::with_capacity(self.entries.len() * INDEX_ENTRY_SIZE);
        for e in &self.entries {
            index.extend_from_slice(&e.encode());
        }
        let header = Header {
            codec: self.codec,
            side: self.side,
            records: self.entries.len() as u64,
            index_offset: self.pos,
            index_crc: crc32fast::hash(&index),
        };
        let head = header.encode();
        let io = |e, op| ShardError::io(&self.tmp, op, e);
        self.out.write_all(&index).map_err(|e| io(e, "write"))?;
        self.out
            .seek(SeekFrom::Start(0))
            .map_err(|e| io(e, "seek"))?;
        self.out.write_all(&head).map_err(|e| io(e, "write"))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| ShardError::io(&self.tmp, "write", e.into_error()))?;
        file.commit()?;

        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        crc.combine(&self.data_crc);
        let mut idx_crc = crc32fast::Hasher::new();
        idx_crc.update(&index);
        crc.combine(&idx_crc);

        Ok(ShardEntry {
            name: self.name,
            records: header.records,
            bytes: self.pos + index.len() as u64,
            crc32: sv_core::crc32_hex(crc.finalize()),
        })
    }
}

/// Settings for a new dataset.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Train or val.
    pub split: Split,
    /// Image side (256 for the paper).
    pub side: u32,
    /// Payload codec.
    pub codec: Codec,
    /// JPEG quality (1-100), jpeg codec only.
    pub jpeg_quality: u8,
    /// JPEG chroma subsampling, jpeg codec only.
    pub jpeg_subsampling: Subsampling,
    /// The classes labels refer to.
    pub classes: Vec<ClassInfo>,
    /// A shard is closed before it would grow past this many bytes.
    pub max_shard_bytes: u64,
}

impl WriterConfig {
    /// The manifest for these settings and shards, sealed with its checksum.
    pub fn manifest(&self, shards: Vec<ShardEntry>) -> Manifest {
        let mut m = Manifest {
            format: FORMAT_NAME.into(),
            version: VERSION,
            split: self.split,
            side: self.side,
            channels: sv_core::CHANNELS as u32,
            codec: self.codec,
            jpeg_quality: (self.codec == Codec::Jpeg).then_some(self.jpeg_quality),
            jpeg_subsampling: (self.codec == Codec::Jpeg).then_some(self.jpeg_subsampling),
            records: shards.iter().map(|s| s.records).sum(),
            classes: self.classes.clone(),
            shards,
            checksum: None,
        };
        m.seal();
        m
    }

    /// File name of shard number `n`.
    pub fn shard_name(&self, n: usize) -> String {
        format!("{}-{n:05}.svs", self.split)
    }
}

/// Writes a whole dataset: records in order, shards rotated by size, manifest last.
pub struct DatasetWriter {
    dir: PathBuf,
    config: WriterConfig,
    current: Option<ShardWriter>,
    done: Vec<ShardEntry>,
    scratch: Vec<u8>,
}

impl DatasetWriter {
    /// Start a new dataset in `dir` (created if missing).
    pub fn create(dir: impl AsRef<Path>, config: WriterConfig) -> Result<DatasetWriter> {
        Self::resume(dir, config, Vec::new())
    }

    /// Continue a dataset whose first shards (`done`, in order) are already complete.
    pub fn resume(
        dir: impl AsRef<Path>,
        config: WriterConfig,
        done: Vec<ShardEntry>,
    ) -> Result<DatasetWriter> {
        let dir = dir.as_ref().to_path_buf();
        if config.classes.is_empty() {
            return Err(ShardError::Invalid("the class list is empty".into()));
        }
        if config.side == 0 {
            return Err(ShardError::Invalid("side must be positive".into()));
        }
        std::fs::create_dir_all(&dir).map_err(|e| ShardError::io(&dir, "create directory", e))?;
        Ok(DatasetWriter {
            dir,
            config,
            current: None,
            done,
            scratch: Vec::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &WriterConfig {
        &self.config
    }

    /// Shards completed so far.
    pub fn completed(&self) -> &[ShardEntry] {
        &self.done
    }

    /// Encode and append one image (`side x side x 3` HWC RGB).
    pub fn push(&mut self, label: u32, pixels: &[u8]) -> Result<Option<ShardEntry>> {
        let mut payload = std::mem::take(&mut self.scratch);
        let r = encode_payload(&self.config, pixels, &mut payload)
            .and_then(|()| self.push_encoded(label, &payload));
        self.scratch = payload;
        r
    }

    /// Append one payload already encoded with [`encode_payload`]. Returns the shard
    /// that was closed to make room, if one was.
    pub fn push_encoded(&mut self, label: u32, payload: &[u8]) -> Result<Option<ShardEntry>> {
        if label as usize >= self.config.classes.len() {
            return Err(ShardError::Invalid(format!(
                "label {label} is out of range: {} classes",
                self.config.classes.len()
            )));
        }
        // Shards never grow past the bound, not even for their first record.
        let alone = DATA_OFFSET + payload.len() as u64 + INDEX_ENTRY_SIZE as u64;
        if alone > self.config.max_shard_bytes {
            return Err(ShardError::Invalid(format!(
                "a record of {} bytes does not fit in a shard of at most {} bytes",
                payload.len(),
                self.config.max_shard_bytes
            )));
        }
        let mut closed = None;
        if let Some(cur) = &self.current
            && cur.records() > 0
            && cur.size_with(payload.len()) > self.config.max_shard_bytes
        {
            closed = self.close_current()?;
        }
        if self.current.is_none() {
            let name = self.config.shard_name(self.done.len());
            self.current = Some(ShardWriter::create(
                &self.dir,
                &name,
                self.config.codec,
                self.config.side,
            )?);
        }
        if let Some(cur) = self.current.as_mut() {
            cur.push(label, payload)?;
        }
        Ok(closed)
    }

    fn close_current(&mut self) -> Result<Option<ShardEntry>> {
        match self.current.take() {
            Some(w) => {
                let entry = w.finish()?;
                self.done.push(entry.clone());
                Ok(Some(entry))
            }
            None => Ok(None),
        }
    }

    /// Close the last shard and write the manifest. Returns the last shard closed
    /// (if any records were pending) and the manifest.
    pub fn finish_with_last(mut self) -> Result<(Option<ShardEntry>, Manifest)> {
        let last = self.close_current()?;
        let manifest = self.config.manifest(self.done);
        write_manifest(&self.dir, &manifest)?;
        Ok((last, manifest))
    }

    /// Close the last shard and write the manifest.
    pub fn finish(self) -> Result<Manifest> {
        Ok(self.finish_with_last()?.1)
    }
}

/// Write `dir/manifest.json` atomically, sealed with its checksum.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let mut sealed = manifest.clone();
    sealed.seal();
    let mut text = serde_json::to_vec_pretty(&sealed)
        .map_err(|e| ShardError::Invalid(format!("manifest serialisation: {e}")))?;
    text.push(b'\n');
    sv_core::fs::write_atomic(dir.join(MANIFEST_FILE), &text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-class JPEG-codec dataset writer (payloads are taken as given).
    fn jpeg_writer(dir: &Path, max_shard_bytes: u64) -> DatasetWriter {
        let classes = vec![ClassInfo {
            wnid: "n1".into(),
            name: "one".into(),
        }];
        DatasetWriter::create(
            dir,
            WriterConfig {
                split: Split::Train,
                side: 16,
                codec: Codec::Jpeg,
                jpeg_quality: 90,
                jpeg_subsampling: crate::Subsampling::default(),
                classes,
                max_shard_bytes,
            },
        )
        .unwrap()
    }

    /// A shard past several write-back steps, of records both larger and smaller
    /// than the write buffer, reads back byte for byte and passes `verify`.
    #[test]
    fn a_shard_written_back_in_steps_reads_back_whole() {
        let d = tempfile::tempdir().unwrap();
        let mut w = jpeg_writer(d.path(), 1 << 30);
        let sizes = [
            WRITE_BUFFER * 3,
            1000,
            WRITE_BUFFER + 1,
            7,
            WRITE_BUFFER - 1,
        ];
        let payloads: Vec<Vec<u8>> = (0..300u32)
            .map(|i| {
                let n = sizes[i as usize % sizes.len()];
                (0..n).map(|j| (j as u32 * 31 + i * 7) as u8).collect()
            })
            .collect();
        let total: usize = payloads.iter().map(Vec::len).sum();
        assert!(total as u64 > 2 * WRITEBACK_STEP + WRITE_BUFFER as u64);
        for p in &payloads {
            w.push_encoded(0, p).unwrap();
        }
        let current = w.current.as_ref().expect("an open shard");
        assert!(
            current.writeback_from >= 2 * WRITEBACK_STEP,
            "write-back was asked for {} bytes",
            current.writeback_from
        );
        w.finish().unwrap();
        let ds = crate::Dataset::open(d.path()).unwrap();
        assert_eq!(ds.len(), payloads.len());
        for (i, p) in payloads.iter().enumerate() {
            let r = ds.record(i).unwrap();
            r.verify().unwrap();
            assert_eq!(r.payload, &p[..], "record {i}");
        }
        // The whole file's CRC, from the header, data and index CRCs combined.
        let shard = &ds.manifest().shards[0];
        let file = std::fs::read(d.path().join(&shard.name)).unwrap();
        assert_eq!(sv_core::crc32_hex(crc32fast::hash(&file)), shard.crc32);
    }

    #[test]
    fn no_shard_grows_past_the_bound_even_for_one_record() {
        let d = tempfile::tempdir().unwrap();
        let bound = DATA_OFFSET + INDEX_ENTRY_SIZE as u64 + 100;
        let mut w = jpeg_writer(d.path(), bound);
        w.push_encoded(0, &[1; 100]).unwrap();
        let err = w.push_encoded(0, &[1; 101]).unwrap_err().to_string();
        assert!(
            err.contains("101 bytes") && err.contains(&bound.to_string()),
            "{err}"
        );
        w.push_encoded(0, &[2; 60]).unwrap();
        let m = w.finish().unwrap();
        assert_eq!(m.records, 2);
        assert!(m.shards.iter().all(|s| s.bytes <= bound), "{:?}", m.shards);
    }
}
