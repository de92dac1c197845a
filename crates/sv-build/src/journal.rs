//! What a build remembers about what it built from, so a repeated command knows
//! which finished shards still hold what the inputs say.
//!
//! The build's record order is cut into *segments*, one per shard: the images whose
//! records (or rejects) it holds, plus the image that did not fit and so closed it
//! (for the last shard, the end of the input). Each segment stores a digest of those
//! images' identities: path, label, size, modification time and, with
//! `hash_inputs`, a CRC-32 of the content. A shard is kept only while its segment's
//! digest matches the inputs as they are now and its header and index checksums
//! hold; the first segment that fails and every one after it are rebuilt.
//!
//! `.build-journal.jsonl` holds the segments of a build in progress (a head line with
//! the settings fingerprint, then a line per finished shard); `build.json` holds
//! those of a finished build, with a digest of the rejects and ignored entries found
//! before decoding. Both are read only under the output folder's lock, so a journal
//! is always an interrupted build's, never a running one's.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sv_shard::{ShardEntry, ShardReader, WriterConfig};

use crate::inputs::{InputImage, Inputs, path_bytes};
use crate::read::Source;
use crate::{BuildError, Reject};

/// Version of the journal and build record layout.
pub(crate) const LAYOUT: u32 = 2;

/// 64-bit FNV-1a: a stable digest of identities (not of content).
#[derive(Clone, Copy)]
pub(crate) struct Digest(u64);

impl Digest {
    pub fn new() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }

    pub fn eat(&mut self, bytes: &[u8]) {
        for &x in bytes {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    /// One input as it is now; `content` is its CRC-32 when content is hashed
    /// (`Err` when it could not be read).
    pub fn eat_image(&mut self, img: &InputImage, content: Option<Result<u32, ()>>) {
        self.eat(&path_bytes(&img.path));
        self.eat(&img.label.to_le_bytes());
        self.eat(&img.size.to_le_bytes());
        self.eat(&img.mtime_s.to_le_bytes());
        self.eat(&img.mtime_ns.to_le_bytes());
        match content {
            None => self.eat(b"-"),
            Some(Ok(crc)) => self.eat(&crc.to_le_bytes()),
            Some(Err(())) => self.eat(b"unreadable"),
        }
    }

    pub fn eat_end(&mut self) {
        self.eat(b"end of input");
    }

    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// A segment's digests as its images are taken: identities, and identities with
/// content CRCs when content is hashed.
#[derive(Clone, Copy)]
pub(crate) struct SegmentDigest {
    stat: Digest,
    content: Option<Digest>,
}

impl SegmentDigest {
    pub fn new(hash_inputs: bool) -> SegmentDigest {
        SegmentDigest {
            stat: Digest::new(),
            content: hash_inputs.then(Digest::new),
        }
    }

    /// `crc`: the content's CRC-32 (`None` when it could not be read); ignored
    /// unless content is hashed.
    pub fn eat_image(&mut self, img: &InputImage, crc: Option<u32>) {
        self.stat.eat_image(img, None);
        if let Some(c) = &mut self.content {
            c.eat_image(img, Some(crc.ok_or(())));
        }
    }

    pub fn eat_end(&mut self) {
        self.stat.eat_end();
        if let Some(c) = &mut self.content {
            c.eat_end();
        }
    }

    /// (identity digest, content digest).
    pub fn finish(self) -> (String, Option<String>) {
        (self.stat.hex(), self.content.map(Digest::hex))
    }
}

/// Everything the shards' bytes depend on besides the images themselves.
pub(crate) fn settings_fingerprint(inputs: &Inputs, config: &WriterConfig, part: &str) -> String {
    let mut d = Digest::new();
    d.eat(
        format!(
            "layout {LAYOUT} {} {} {} {} {} {part}",
            config.split, config.side, config.codec, config.jpeg_quality, config.max_shard_bytes
        )
        .as_bytes(),
    );
    if config.codec == sv_shard::Codec::Jpeg {
        d.eat(config.jpeg_subsampling.as_str().as_bytes());
    }
    for c in &inputs.classes {
        d.eat(c.wnid.as_bytes());
        d.eat(c.name.as_bytes());
    }
    d.hex()
}

/// The rejects and ignored entries found before decoding.
pub(crate) fn listing_digest(inputs: &Inputs) -> String {
    let mut d = Digest::new();
    for r in &inputs.rejects {
        d.eat(r.path.as_bytes());
        d.eat(r.reason.as_bytes());
    }
    d.eat(b"ignored");
    for i in &inputs.ignored {
        d.eat(i.path.as_bytes());
        d.eat(i.reason.as_bytes());
    }
    d.hex()
}

/// One shard's share of the record order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Segment {
    /// The shard; `None` for a tail of images that were all rejected.
    pub shard: Option<ShardEntry>,
    /// Index into the image list of the first image not in this or earlier segments.
    pub next_image: usize,
    /// Decoding rejects among this segment's images.
    pub rejects: Vec<Reject>,
    /// Digest of the segment's images and its boundary (see the module header).
    pub inputs: String,
    /// The same with each image's content CRC-32, when content was hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// The first line of the journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct JournalHead {
    pub layout: u32,
    pub fingerprint: String,
}

/// `build.json`: what a finished build was made from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BuildRecord {
    pub layout: u32,
    pub fingerprint: String,
    /// Whether every segment has a content digest.
    pub hash_inputs: bool,
    /// Digest of the rejects and ignored entries found before decoding.
    pub listing: String,
    /// Input entries considered (images plus rejects found before decoding).
    pub inputs: usize,
    pub records: u64,
    pub rejects: usize,
    pub segments: Vec<Segment>,
    /// Entries not read on purpose, and why.
    pub ignored: Vec<crate::inputs::Ignored>,
    /// For a part of a split build: which part, of how many, and its image range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<crate::PartRecord>,
}

/// What is left of an earlier build in the output folder.
pub(crate) struct Kept {
    pub segments: Vec<Segment>,
    /// Why the first segment not kept was dropped (when some existed).
    pub dropped: Option<String>,
}

/// How segments are checked against the inputs as they are now.
pub(crate) struct Check<'a> {
    pub out: &'a Path,
    pub images: &'a [InputImage],
    /// The images this build covers: all, or a part's range.
    pub range: std::ops::Range<usize>,
    pub writer: &'a WriterConfig,
    /// Compare content digests (reading every input a kept segment covers).
    pub hash_inputs: bool,
    /// Where content is read from (`hash_inputs` only).
    pub source: &'a Source,
}

impl Check<'_> {
    /// Keep segments from the start while each still matches; stop at the first that
    /// does not (its shard and the later ones are rebuilt).
    pub fn keep(&self, segments: Vec<Segment>) -> Kept {
        let mut kept = Vec::new();
        let mut start = self.range.start;
        let mut shards = 0;
        let mut dropped = None;
        for seg in segments {
            if let Err(why) = self.segment_holds(shards, start, &seg) {
                dropped = Some(why);
                break;
            }
            start = seg.next_image;
            shards += usize::from(seg.shard.is_some());
            kept.push(seg);
        }
        Kept {
            segments: kept,
            dropped,
        }
    }

    fn segment_holds(&self, shards: usize, start: usize, seg: &Segment) -> Result<(), String> {
        let end = self.range.end;
        let name = seg
            .shard
            .as_ref()
            .map_or("the rejected tail", |s| s.name.as_str());
        if seg.next_image < start || seg.next_image > end {
            return Err(format!("{name}: the list of inputs changed"));
        }
        let (now, then) = if self.hash_inputs {
            let Some(then) = &seg.content else {
                return Err(format!(
                    "{name}: the earlier build recorded no content hashes to check against"
                ));
            };
            (self.digest(start, seg.next_image, true), then)
        } else {
            (self.digest(start, seg.next_image, false), &seg.inputs)
        };
        if &now != then {
            let first = self.images.get(start).map_or("", |i| i.rel.as_str());
            let last = self
                .images
                .get(seg.next_image.min(end).saturating_sub(1))
                .map_or("", |i| i.rel.as_str());
            return Err(format!(
                "{name}: its inputs changed (among {first} .. {last}, or the one after)"
            ));
        }
        if let Some(shard) = &seg.shard {
            if shard.name != self.writer.shard_name(shards) {
                return Err(format!("{}: out of sequence", shard.name));
            }
            ShardReader::open(
                &self.out.join(&shard.name),
                shard,
                self.writer.codec,
                self.writer.side,
                self.writer.classes.len(),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The digest of images `start..end` and the boundary after them, with content
    /// CRCs read now when `content`.
    fn digest(&self, start: usize, end: usize, content: bool) -> String {
        let crc = |img: &InputImage| {
            content.then(|| {
                self.source
                    .read(img)
                    .map(|b| crc32fast::hash(&b))
                    .map_err(|_| ())
            })
        };
        let mut d = Digest::new();
        for img in &self.images[start..end] {
            d.eat_image(img, crc(img));
        }
        match self.images.get(end).filter(|_| end < self.range.end) {
            Some(img) => d.eat_image(img, crc(img)),
            None => d.eat_end(),
        }
        d.hex()
    }
}

/// The identities of a whole input list, for telling parts of one build apart from
/// parts of another.
pub(crate) fn inputs_digest(images: &[InputImage]) -> String {
    let mut d = Digest::new();
    for img in images {
        d.eat_image(img, None);
    }
    d.hex()
}

/// One JSON line.
pub(crate) fn line<T: Serialize>(v: &T) -> Result<String, BuildError> {
    let mut s = serde_json::to_string(v)
        .map_err(|e| BuildError::Input(format!("cannot serialise the journal: {e}")))?;
    s.push('\n');
    Ok(s)
}

/// Parse a journal: its head and the segments up to the first line a kill cut short.
pub(crate) fn parse_journal(text: &str) -> Option<(JournalHead, Vec<Segment>)> {
    let mut lines = text.lines();
    let head: JournalHead = serde_json::from_str(lines.next()?).ok()?;
    if head.layout != LAYOUT {
        return None;
    }
    let segments = lines
        .map_while(|l| serde_json::from_str::<Segment>(l).ok())
        .collect();
    Some((head, segments))
}

/// Parse `build.json` of this layout.
pub(crate) fn parse_record(bytes: &[u8]) -> Option<BuildRecord> {
    serde_json::from_slice::<BuildRecord>(bytes)
        .ok()
        .filter(|r| r.layout == LAYOUT)
}
