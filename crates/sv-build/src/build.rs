//! The build: decode and resize in parallel, write in input order, journal each
//! finished shard so an interrupted build resumes where it stopped.
//!
//! Determinism: workers claim input indices from a counter and may finish in any
//! order; the writer takes results strictly in index order, so the bytes written do
//! not depend on the worker count or timing. Workers stay at most `window` images
//! ahead of the writer, which bounds memory whatever the dataset size.
//!
//! Files in the output folder besides the shards and `manifest.json`:
//! - `rejects.jsonl`: one `{"path": ..., "reason": ...}` per skipped input file;
//! - `build.json`: what was built from what (see [`crate::journal`]), so a repeated
//!   command knows which shards are still up to date;
//! - `.build-journal.jsonl` while a build runs, or after it was interrupted;
//! - `.build.lock` while a build runs (see [`crate::lock`]).
//!
//! The helpers for those files are in the `files` module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use sv_core::{Geometry, Split};
use sv_shard::{
    Codec, DATA_OFFSET, DatasetWriter, INDEX_ENTRY_SIZE, Manifest, ShardEntry, Subsampling,
    WriterConfig,
};

use crate::files::{
    STAGING_DIR, entries, fresh_staging, journal_append, list_our_files, not_ours_in_the_way,
    promote, read_own_file, remove, remove_staging, write_journal, write_json_atomic,
    write_rejects,
};
use crate::inputs::{Ignored, InputSpec, Inputs, discover};
use crate::journal::{
    BuildRecord, Check, JournalHead, LAYOUT, Segment, SegmentDigest, inputs_digest, line,
    listing_digest, parse_journal, parse_record, settings_fingerprint,
};
use crate::lock::OutputLock;
use crate::read::Source;
use crate::{BuildError, Occupant, Part, PartRecord, Reject};

pub use crate::files::{BUILD_FILE, JOURNAL_FILE, REJECTS_FILE};

/// The most decoding threads a build starts (each holds a decoder and an image).
pub const MAX_WORKERS: usize = 1024;
/// The largest shard size bound, in bytes (64 GiB): a shard is mapped whole by its
/// readers and checked whole by `shard verify` and `shard merge`.
pub const MAX_SHARD_BYTES: u64 = 64 << 30;
/// The default [`BuildConfig::max_reject_fraction`]: a real ImageNet build rejects
/// almost nothing, so more than this is a wrong input or labels, not bad files.
pub const DEFAULT_MAX_REJECT_FRACTION: f64 = 0.05;

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildConfig {
    /// Where the images are.
    pub input: InputSpec,
    /// The dataset folder to write.
    pub output: PathBuf,
    /// Train or val.
    pub split: Split,
    /// Record codec.
    pub codec: Codec,
    /// JPEG quality for the jpeg codec.
    pub jpeg_quality: u8,
    /// JPEG chroma subsampling for the jpeg codec.
    pub jpeg_subsampling: Subsampling,
    /// Stored image side (256 in the paper).
    pub side: u32,
    /// Decoding threads (at least 1).
    pub workers: usize,
    /// Shard size bound in bytes: no shard file is larger.
    pub max_shard_bytes: u64,
    /// Stop at the first input that cannot be used.
    pub strict: bool,
    /// Stop, with an error, once more than this fraction of the inputs (`0..=1`) is
    /// rejected: a wholesale mislabelling or a wrong folder is not a dataset. See
    /// [`DEFAULT_MAX_REJECT_FRACTION`].
    pub max_reject_fraction: f64,
    /// Replace a dataset in `output` built from other inputs or settings.
    pub force: bool,
    /// Record a CRC-32 of every input's content (not only its size and modification
    /// time), so a file rewritten in place with the same size and time is noticed.
    /// Checking costs a read of every input a kept shard covers.
    pub hash_inputs: bool,
    /// Build only this part of the record order (for a build split across machines;
    /// see [`crate::merge`]).
    pub part: Option<Part>,
}

/// What happened, for the summary.
#[derive(Clone, Debug)]
pub struct BuildSummary {
    /// The manifest written.
    pub manifest: Manifest,
    /// Input files considered (labelled images plus skipped files).
    pub inputs: usize,
    /// Skipped files, in input order.
    pub rejects: Vec<Reject>,
    /// Entries found in the input and deliberately not read, with the reason.
    pub ignored: Vec<Ignored>,
    /// Shards kept from an earlier (interrupted or finished) build.
    pub resumed_shards: usize,
    /// Input images already covered by those shards.
    pub resumed_inputs: usize,
    /// Why shards of an earlier build were rebuilt, if any were.
    pub rebuilt_because: Option<String>,
    /// The output was already complete and nothing was done.
    pub up_to_date: bool,
}

/// Progress reports, from the writer's thread.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// Inputs are listed: `total` images, of which `done` are already in kept shards.
    Start {
        /// Images to process in all.
        total: usize,
        /// Images already covered.
        done: usize,
    },
    /// One more image taken in order.
    Image {
        /// Images done (written or rejected).
        done: usize,
        /// Images rejected so far.
        rejected: usize,
    },
    /// A shard file was finished.
    Shard {
        /// Shards finished so far.
        shards: usize,
    },
}

/// Build the dataset described by `config`.
pub fn build(
    config: &BuildConfig,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BuildSummary, BuildError> {
    check_config(config)?;
    let out = &config.output;
    if let Ok(m) = std::fs::metadata(out)
        && !m.is_dir()
    {
        return Err(BuildError::Input(format!(
            "the output {} is {}, not a folder",
            out.display(),
            crate::read::kind_of(m.file_type())
        )));
    }
    std::fs::create_dir_all(out).map_err(BuildError::io(out, "create the output folder"))?;
    if same_folder(&config.input.input, out) {
        return Err(BuildError::Input(format!(
            "the output folder {} is the input folder",
            out.display()
        )));
    }
    let _lock = OutputLock::acquire(out)?;
    let inputs = discover(&config.input, Some(out))?;
    let mut job = Job::new(config, &inputs)?;
    if config.strict
        && let Some(r) = job.pre_rejects.first()
    {
        return Err(BuildError::Rejected {
            path: config.input.input.join(&r.path),
            reason: r.reason.clone(),
        });
    }
    // A build forced over another dataset is written beside it, in the staging
    // folder, and replaces it once whole; cut short, it resumes there.
    let staged = job.staged_build_matches()?;
    if staged {
        job.dir = out.join(STAGING_DIR);
    }
    let mut plan = job.plan()?;
    if !plan.up_to_date {
        job.check_usable()?;
    }
    if !staged && !plan.up_to_date {
        if plan.clear_first && !list_our_files(out)?.is_empty() {
            job.dir = fresh_staging(out)?;
            plan.clear_first = false;
        } else {
            remove_staging(out)?;
        }
    }
    if plan.up_to_date {
        return Ok(job.summary(plan.manifest_if_current, plan.kept, None, true));
    }
    let kept = plan.kept;
    let mut journal = job.start_journal(&kept, plan.clear_first)?;
    let start = kept.last().map_or(job.range.start, |s| s.next_image);
    progress(Progress::Start {
        total: job.range.len(),
        done: start - job.range.start,
    });
    let done_shards = kept.iter().filter_map(|s| s.shard.clone()).collect();
    let writer = DatasetWriter::resume(job.out(), job.writer.clone(), done_shards)?;
    let mut segments = kept.clone();
    let Written { writer, tail } = job.run(writer, start, &mut segments, &mut journal, progress)?;
    let before = writer.completed().len();
    let manifest = job.finish(writer, tail, &mut segments)?;
    if manifest.shards.len() > before {
        // the last shard, closed by finish
        progress(Progress::Shard {
            shards: manifest.shards.len(),
        });
    }
    drop(journal);
    let _ = std::fs::remove_file(job.out().join(JOURNAL_FILE));
    if job.out() != out {
        promote(job.out(), out)?;
    }
    Ok(job.summary(Some(manifest), segments, plan.dropped, false)).map(|mut s| {
        s.resumed_shards = kept.iter().filter(|k| k.shard.is_some()).count();
        s.resumed_inputs = start - job.range.start;
        s
    })
}

fn check_config(config: &BuildConfig) -> Result<(), BuildError> {
    if config.workers == 0 {
        return Err(BuildError::Setting {
            setting: "workers",
            problem: "the number of workers must be at least 1".into(),
        });
    }
    if config.workers > MAX_WORKERS {
        return Err(BuildError::Setting {
            setting: "workers",
            problem: format!(
                "{} workers: at most {MAX_WORKERS} decoding threads are started",
                config.workers
            ),
        });
    }
    if config.max_shard_bytes > MAX_SHARD_BYTES {
        return Err(BuildError::Setting {
            setting: "max_shard_bytes",
            problem: format!(
                "a shard size bound of {} bytes is more than the largest allowed, {MAX_SHARD_BYTES} \
             bytes ({} MiB)",
                config.max_shard_bytes,
                MAX_SHARD_BYTES >> 20
            ),
        });
    }
    if !(0.0..=1.0).contains(&config.max_reject_fraction) {
        return Err(BuildError::Setting {
            setting: "max_reject_fraction",
            problem: format!(
                "a largest reject fraction of {} is not between 0 and 1",
                config.max_reject_fraction
            ),
        });
    }
    if !(1..=100).contains(&config.jpeg_quality) {
        return Err(BuildError::Setting {
            setting: "jpeg_quality",
            problem: format!("JPEG quality {} is outside 1..=100", config.jpeg_quality),
        });
    }
    if !(16..=4096).contains(&config.side) {
        return Err(BuildError::Setting {
            setting: "side",
            problem: format!("size {} is outside 16..=4096", config.side),
        });
    }
    if let Some(p) = &config.part {
        p.check()?;
    }
    // A raw record has a fixed size: a bound it cannot fit under is refused up front.
    let raw = Geometry { side: config.side }.image_bytes() as u64;
    if config.codec == Codec::Raw && raw > max_payload(config.max_shard_bytes) {
        return Err(BuildError::Setting {
            setting: "max_shard_bytes",
            problem: format!(
                "a raw {side}x{side} record is {raw} bytes ({:.1} MiB): a shard holding one is \
             {} bytes, more than the shard size bound of {} bytes ({:.1} MiB)",
                mib(raw),
                raw + DATA_OFFSET + INDEX_ENTRY_SIZE as u64,
                config.max_shard_bytes,
                mib(config.max_shard_bytes),
                side = config.side,
            ),
        });
    }
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The largest payload a shard of at most `max_shard_bytes` can hold.
fn max_payload(max_shard_bytes: u64) -> u64 {
    max_shard_bytes.saturating_sub(DATA_OFFSET + INDEX_ENTRY_SIZE as u64)
}

fn same_folder(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// What the earlier build left, and what to do about it.
struct Plan {
    kept: Vec<Segment>,
    dropped: Option<String>,
    up_to_date: bool,
    manifest_if_current: Option<Manifest>,
    /// Remove our files before starting (`--force` over other settings).
    clear_first: bool,
}

/// One build's settings and inputs, resolved.
struct Job<'a> {
    /// The folder written: the output, or its staging folder when the build replaces
    /// another dataset there.
    dir: PathBuf,
    config: &'a BuildConfig,
    inputs: &'a Inputs,
    writer: WriterConfig,
    source: Source,
    fingerprint: String,
    listing: String,
    range: std::ops::Range<usize>,
    /// Rejects found before decoding that this build reports (all of them, or part 0's).
    pre_rejects: Vec<Reject>,
    ignored: Vec<Ignored>,
}

impl<'a> Job<'a> {
    fn new(config: &'a BuildConfig, inputs: &'a Inputs) -> Result<Job<'a>, BuildError> {
        let writer = WriterConfig {
            split: config.split,
            side: config.side,
            codec: config.codec,
            jpeg_quality: config.jpeg_quality,
            jpeg_subsampling: config.jpeg_subsampling,
            classes: inputs.classes.clone(),
            max_shard_bytes: config.max_shard_bytes,
        };
        let n = inputs.images.len();
        let (range, part_text, first_part) = match &config.part {
            Some(p) => (
                p.range(n),
                format!("part {}/{}", p.index, p.count),
                p.index == 0,
            ),
            None => (0..n, String::new(), true),
        };
        let (pre_rejects, ignored) = if first_part {
            (inputs.rejects.clone(), inputs.ignored.clone())
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Job {
            config,
            inputs,
            fingerprint: settings_fingerprint(inputs, &writer, &part_text),
            listing: listing_digest(inputs),
            source: Source::new(inputs, &config.input.input)?,
            writer,
            range,
            pre_rejects,
            ignored,
            dir: config.output.clone(),
        })
    }

    fn out(&self) -> &Path {
        &self.dir
    }

    /// Whether the output's staging folder holds this build, cut short.
    fn staged_build_matches(&self) -> Result<bool, BuildError> {
        let path = self.config.output.join(STAGING_DIR).join(JOURNAL_FILE);
        Ok(read_own_file(&path)?
            .and_then(|b| parse_journal(&String::from_utf8_lossy(&b)))
            .is_some_and(|(head, _)| head.fingerprint == self.fingerprint))
    }

    fn check(&self) -> Check<'_> {
        Check {
            out: self.out(),
            images: &self.inputs.images,
            range: self.range.clone(),
            writer: &self.writer,
            hash_inputs: self.config.hash_inputs,
            source: &self.source,
        }
    }

    /// Read what an earlier build left: an interrupted build's journal, or a finished
    /// build's record, and keep what still holds.
    fn plan(&self) -> Result<Plan, BuildError> {
        let out = self.out();
        let journal = read_own_file(&out.join(JOURNAL_FILE))?
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let record = read_own_file(&out.join(BUILD_FILE))?;
        let fresh = |clear_first| Plan {
            kept: Vec::new(),
            dropped: None,
            up_to_date: false,
            manifest_if_current: None,
            clear_first,
        };
        if let Some(text) = journal {
            return match parse_journal(&text) {
                Some((head, segs)) if head.fingerprint == self.fingerprint => {
                    Ok(self.keep(segs, None))
                }
                _ if self.config.force => Ok(fresh(true)),
                _ => Err(self.occupied(Occupant::InterruptedBuild)),
            };
        }
        if let Some(bytes) = record {
            return match parse_record(&bytes) {
                Some(r) if r.fingerprint == self.fingerprint => {
                    Ok(self.keep(r.segments.clone(), Some(r)))
                }
                _ if self.config.force => Ok(fresh(true)),
                _ => Err(self.occupied(Occupant::OtherDataset)),
            };
        }
        let ours = list_our_files(out)?;
        let foreign = entries(out)?.iter().filter(|p| !ours.contains(p)).count();
        if !self.config.force {
            if !ours.is_empty() {
                return Err(self.occupied(Occupant::OtherDataset));
            }
            if foreign > 0 {
                return Err(self.occupied(Occupant::OtherFiles));
            }
        }
        Ok(fresh(true))
    }

    /// Refuse, before anything is written, an input with no usable image at all or
    /// with more rejects found while listing than the build allows.
    fn check_usable(&self) -> Result<(), BuildError> {
        if self.inputs.images.is_empty() {
            return Err(BuildError::Empty {
                input: self.config.input.input.clone(),
                rejects: self.inputs.rejects.len(),
                ignored: self.inputs.ignored.len(),
                first: self
                    .inputs
                    .rejects
                    .first()
                    .map(|r| format!("{}: {}", r.path, r.reason))
                    .or_else(|| {
                        self.inputs
                            .ignored
                            .first()
                            .map(|i| format!("{}: {}", i.path, i.reason))
                    }),
            });
        }
        self.check_rejects(self.pre_rejects.len(), self.pre_rejects.first())
    }

    /// Inputs this build accounts for: its images and the rejects found listing them.
    fn total(&self) -> usize {
        self.range.len() + self.pre_rejects.len()
    }

    /// Whether `rejected` is more than the build allows.
    fn too_many(&self, rejected: usize) -> bool {
        rejected as f64 > self.config.max_reject_fraction * self.total() as f64
    }

    /// `Err` once `rejected` is more than the build allows.
    fn check_rejects(&self, rejected: usize, first: Option<&Reject>) -> Result<(), BuildError> {
        let total = self.total();
        let limit = self.config.max_reject_fraction;
        if self.too_many(rejected) {
            return Err(BuildError::TooManyRejects {
                rejected,
                total,
                limit,
                first: first.cloned().unwrap_or_else(|| Reject {
                    path: String::new(),
                    reason: String::new(),
                }),
            });
        }
        Ok(())
    }

    fn occupied(&self, holds: Occupant) -> BuildError {
        BuildError::Occupied {
            dir: self.out().to_path_buf(),
            holds,
        }
    }

    fn keep(&self, segments: Vec<Segment>, record: Option<BuildRecord>) -> Plan {
        let had = segments.len();
        let kept = self.check().keep(segments);
        let complete = record.is_some() && kept.segments.len() == had && had > 0;
        let manifest = complete
            .then(|| self.current_manifest(&kept.segments))
            .flatten();
        let up_to_date = complete
            && manifest.is_some()
            && record.as_ref().is_some_and(|r| r.listing == self.listing)
            && crate::read_rejects(self.out()).ok() == Some(self.all_rejects(&kept.segments));
        Plan {
            kept: kept.segments,
            dropped: kept.dropped,
            up_to_date,
            manifest_if_current: manifest,
            clear_first: false,
        }
    }

    /// The manifest on disk, if it is exactly the one these segments make.
    fn current_manifest(&self, segments: &[Segment]) -> Option<Manifest> {
        let shards: Vec<ShardEntry> = segments.iter().filter_map(|s| s.shard.clone()).collect();
        let want = self.writer.manifest(shards);
        Manifest::load(self.out()).ok().filter(|m| *m == want)
    }

    fn all_rejects(&self, segments: &[Segment]) -> Vec<Reject> {
        let mut all = self.pre_rejects.clone();
        for s in segments {
            all.extend(s.rejects.iter().cloned());
        }
        all
    }

    /// Write a journal holding the kept segments, then remove every file of ours that
    /// they do not account for (so a kill from here on leaves a resumable folder).
    fn start_journal(
        &self,
        kept: &[Segment],
        clear_first: bool,
    ) -> Result<std::fs::File, BuildError> {
        let out = self.out();
        if let Some((p, kind)) = not_ours_in_the_way(out)? {
            return Err(BuildError::Input(format!(
                "{} is {kind}, where the build writes a file of that name; move it away",
                p.display()
            )));
        }
        if clear_first {
            for p in list_our_files(out)? {
                remove(&p)?;
            }
        }
        let mut body = line(&JournalHead {
            layout: LAYOUT,
            fingerprint: self.fingerprint.clone(),
        })?;
        for s in kept {
            body.push_str(&line(s)?);
        }
        let file = write_journal(out, body.as_bytes())?;
        let keep: Vec<&str> = kept
            .iter()
            .filter_map(|s| s.shard.as_ref().map(|e| e.name.as_str()))
            .collect();
        for p in list_our_files(out)? {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.as_deref().unwrap_or("");
            if name != JOURNAL_FILE && !keep.contains(&name) {
                remove(&p)?;
            }
        }
        Ok(file)
    }

    /// Decode on `workers` threads, write in order; returns the writer and the
    /// unfinished last segment.
    fn run(
        &self,
        writer: DatasetWriter,
        start: usize,
        segments: &mut Vec<Segment>,
        journal: &mut std::fs::File,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Written, BuildError> {
        let config = self.config;
        let images = &self.inputs.images;
        let end = self.range.end;
        let window = (config.workers * 8).max(16);
        let gate = Gate::new(start, window);
        let budget = Budget::new(IN_FLIGHT_BYTES);
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Prepared>();
        // An archive is read by one thread, in record order, for all the workers;
        // the gate and the byte budget bound what it reads ahead.
        let (feed_tx, feed_rx) = mpsc::channel::<(usize, Result<Vec<u8>, String>)>();
        let feed_rx = Mutex::new(feed_rx);
        let sequential = self.source.sequential();
        let mut back = WriteBack {
            job: self,
            writer,
            tail: Tail {
                digest: SegmentDigest::new(config.hash_inputs),
                pending: Vec::new(),
            },
            rejected: self.all_rejects(segments).len(),
            next: start,
            ready: BTreeMap::new(),
            segments,
            journal,
            gate: &gate,
            progress,
        };

        std::thread::scope(|scope| -> Result<(), BuildError> {
            if sequential {
                let (gate, stop, budget) = (&gate, &stop, &budget);
                scope.spawn(move || {
                    while let Some(i) = gate.claim(end, stop) {
                        let img = &images[i];
                        if !budget.acquire(img.size, stop) {
                            break;
                        }
                        if feed_tx.send((i, self.source.read(img))).is_err() {
                            break;
                        }
                    }
                });
            } else {
                drop(feed_tx);
            }
            for _ in 0..config.workers {
                let tx = tx.clone();
                let (gate, stop, budget, feed_rx) = (&gate, &stop, &budget, &feed_rx);
                scope.spawn(move || {
                    let next = || {
                        if sequential {
                            let job = feed_rx.lock().ok()?.recv().ok()?;
                            budget.release(images[job.0].size);
                            Some(job)
                        } else {
                            let i = gate.claim(end, stop)?;
                            Some((i, self.source.read(&images[i])))
                        }
                    };
                    self.worker(&next, tx)
                });
            }
            drop(tx);
            // However the writer ends, the reader and workers stop with it.
            let guard = StopGuard {
                stop: &stop,
                gate: &gate,
                budget: &budget,
                rx,
            };
            while back.next < end {
                let Ok(p) = guard.rx.recv() else {
                    return Err(BuildError::Input(
                        "a decoding worker stopped unexpectedly".into(),
                    ));
                };
                back.accept(p)?;
            }
            Ok(())
        })?;
        Ok(Written {
            writer: back.writer,
            tail: back.tail,
        })
    }

    /// One decoding thread: take the next input and its bytes, decode, encode, send.
    #[allow(clippy::type_complexity)]
    fn worker(
        &self,
        next: &dyn Fn() -> Option<(usize, Result<Vec<u8>, String>)>,
        tx: mpsc::Sender<Prepared>,
    ) {
        let side = self.config.side;
        let new_pre = || sv_image::Preprocessor::new(sv_image::PrepConfig::with_side(side));
        let mut pre = new_pre();
        let mut pixels = vec![0u8; Geometry { side }.image_bytes()];
        while let Some((i, bytes)) = next() {
            let crc = self
                .config
                .hash_inputs
                .then(|| bytes.as_ref().ok().map(|b| crc32fast::hash(b)));
            // A worker that died would leave its index unwritten and the writer
            // waiting for it forever: any panic becomes this file's reject.
            let result = bytes.and_then(|b| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.prepare(&mut pre, &b, &mut pixels)
                }))
                .unwrap_or_else(|_| {
                    pre = new_pre();
                    Err("internal error: preparing this file panicked".into())
                })
            });
            if tx
                .send(Prepared {
                    index: i,
                    crc,
                    result,
                })
                .is_err()
            {
                break;
            }
        }
    }

    /// Decode, resize and encode one input; `Err` is the reject reason.
    fn prepare(
        &self,
        pre: &mut sv_image::Preprocessor,
        bytes: &[u8],
        pixels: &mut [u8],
    ) -> Result<Vec<u8>, String> {
        let config = self.config;
        pre.process(bytes, pixels).map_err(|e| e.to_string())?;
        let mut payload = Vec::new();
        sv_shard::encode_payload(&self.writer, pixels, &mut payload).map_err(|e| e.to_string())?;
        let limit = max_payload(config.max_shard_bytes);
        if payload.len() as u64 > limit {
            return Err(format!(
                "its {} record is {} bytes, more than fits in a shard of at most {} bytes",
                config.codec,
                payload.len(),
                config.max_shard_bytes
            ));
        }
        Ok(payload)
    }

    /// Close the last shard, write the manifest, rejects and build record.
    fn finish(
        &self,
        writer: DatasetWriter,
        Tail {
            mut digest,
            pending,
        }: Tail,
        segments: &mut Vec<Segment>,
    ) -> Result<Manifest, BuildError> {
        let (last, manifest) = writer.finish_with_last()?;
        digest.eat_end();
        let at_end = segments
            .last()
            .is_some_and(|s| s.next_image == self.range.end);
        if !at_end || segments.is_empty() {
            let (inputs, content) = digest.finish();
            segments.push(Segment {
                shard: last,
                next_image: self.range.end,
                rejects: pending,
                inputs,
                content,
            });
        }
        let rejects = self.all_rejects(segments);
        write_rejects(self.out(), &rejects)?;
        let record = BuildRecord {
            layout: LAYOUT,
            fingerprint: self.fingerprint.clone(),
            hash_inputs: segments.iter().all(|s| s.content.is_some()),
            listing: self.listing.clone(),
            inputs: self.range.len() + self.pre_rejects.len(),
            records: manifest.records,
            rejects: rejects.len(),
            segments: segments.clone(),
            ignored: self.ignored.clone(),
            part: self.config.part.as_ref().map(|p| PartRecord {
                index: p.index,
                count: p.count,
                first_image: self.range.start,
                images: self.range.len(),
                total_images: self.inputs.images.len(),
                inputs: inputs_digest(&self.inputs.images),
                settings: settings_fingerprint(self.inputs, &self.writer, ""),
            }),
        };
        write_json_atomic(self.out(), BUILD_FILE, &record)?;
        Ok(manifest)
    }

    fn summary(
        &self,
        manifest: Option<Manifest>,
        segments: Vec<Segment>,
        rebuilt_because: Option<String>,
        up_to_date: bool,
    ) -> BuildSummary {
        let manifest = manifest.unwrap_or_else(|| {
            self.writer
                .manifest(segments.iter().filter_map(|s| s.shard.clone()).collect())
        });
        BuildSummary {
            manifest,
            inputs: self.range.len() + self.pre_rejects.len(),
            rejects: self.all_rejects(&segments),
            ignored: self.ignored.clone(),
            resumed_shards: 0,
            resumed_inputs: 0,
            rebuilt_because,
            up_to_date,
        }
    }
}

/// What [`Job::run`] leaves for [`Job::finish`].
struct Written {
    /// The writer, its last shard still open.
    writer: DatasetWriter,
    /// The segment that shard belongs to.
    tail: Tail,
}

/// The unfinished last segment: the digest of its images so far and its rejects.
struct Tail {
    digest: SegmentDigest,
    pending: Vec<Reject>,
}

/// The writer's side of a build: takes the workers' results as they come and writes
/// them strictly in input order, journalling each shard it closes.
struct WriteBack<'w, 'a> {
    job: &'w Job<'a>,
    writer: DatasetWriter,
    tail: Tail,
    /// Rejects so far, with those of kept segments and those found listing.
    rejected: usize,
    /// The next input index to write.
    next: usize,
    /// Results that came before their turn.
    ready: BTreeMap<usize, Prepared>,
    segments: &'w mut Vec<Segment>,
    journal: &'w mut std::fs::File,
    gate: &'w Gate,
    progress: &'w (dyn Fn(Progress) + Sync),
}

impl WriteBack<'_, '_> {
    /// Take one worker's result, then write every result that is now in turn.
    fn accept(&mut self, p: Prepared) -> Result<(), BuildError> {
        self.ready.insert(p.index, p);
        while let Some(p) = self.ready.remove(&self.next) {
            self.take(p)?;
            self.next += 1;
            self.gate.advance(self.next);
            (self.progress)(Progress::Image {
                done: self.next - self.job.range.start,
                rejected: self.rejected,
            });
        }
        Ok(())
    }

    /// Write (or reject) input `self.next`.
    fn take(&mut self, p: Prepared) -> Result<(), BuildError> {
        let job = self.job;
        let config = job.config;
        let img = &job.inputs.images[self.next];
        let content = p.crc.flatten();
        match p.result {
            Ok(payload) => {
                if let Some(closed) = self.writer.push_encoded(img.label, &payload)? {
                    // `img` did not fit: it is the closed segment's boundary.
                    self.tail.digest.eat_image(img, content);
                    let fresh = SegmentDigest::new(config.hash_inputs);
                    let (inputs, content) =
                        std::mem::replace(&mut self.tail.digest, fresh).finish();
                    let seg = Segment {
                        shard: Some(closed),
                        next_image: self.next,
                        rejects: std::mem::take(&mut self.tail.pending),
                        inputs,
                        content,
                    };
                    journal_append(self.journal, job.out(), &seg)?;
                    self.segments.push(seg);
                    (self.progress)(Progress::Shard {
                        shards: self.writer.completed().len(),
                    });
                }
                self.tail.digest.eat_image(img, content);
            }
            Err(reason) => {
                if let Some((path, why)) = job.source.damaged() {
                    return Err(BuildError::Damaged {
                        path: path.to_path_buf(),
                        member: img.rel.clone(),
                        reason: why.to_string(),
                    });
                }
                if config.strict {
                    return Err(BuildError::Rejected {
                        path: config.input.input.join(&img.path),
                        reason,
                    });
                }
                tracing::debug!(path = %img.rel, %reason, "rejected");
                self.tail.digest.eat_image(img, content);
                self.tail.pending.push(Reject {
                    path: img.rel.clone(),
                    reason,
                });
                self.rejected += 1;
                if job.too_many(self.rejected) || self.rejected == job.total() {
                    let all = job.all_rejects(self.segments);
                    let first = all.first().or(self.tail.pending.first());
                    job.check_rejects(self.rejected, first)?;
                    return Err(BuildError::Empty {
                        input: config.input.input.clone(),
                        rejects: self.rejected,
                        ignored: job.ignored.len(),
                        first: first.map(|r| format!("{}: {}", r.path, r.reason)),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Stops the archive reader and the workers when the writer's loop ends, however it
/// ends (finished, or an error): a worker waiting at the gate or the reader waiting
/// for budget is woken to see the stop, and a worker sending finds the channel shut.
struct StopGuard<'s> {
    stop: &'s AtomicBool,
    gate: &'s Gate,
    budget: &'s Budget,
    rx: mpsc::Receiver<Prepared>,
}

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.gate.wake_all();
        self.budget.wake_all();
        // `rx` is dropped after this, shutting the channel
    }
}

/// One worker's result for input `index`.
struct Prepared {
    index: usize,
    /// With `hash_inputs`: the content's CRC-32, `None` when it could not be read.
    crc: Option<Option<u32>>,
    result: Result<Vec<u8>, String>,
}

/// Input bytes an archive's reader may hold ahead of the decoders.
const IN_FLIGHT_BYTES: u64 = 512 << 20;

/// Bytes read but not yet decoded: the reader waits while the budget is spent (one
/// input larger than the budget still passes alone).
struct Budget {
    used: Mutex<u64>,
    cv: Condvar,
    cap: u64,
}

impl Budget {
    fn new(cap: u64) -> Budget {
        Budget {
            used: Mutex::new(0),
            cv: Condvar::new(),
            cap,
        }
    }

    /// Wait for room for `n` bytes; `false` when the build is stopping.
    fn acquire(&self, n: u64, stop: &AtomicBool) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + n > self.cap {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            used = self.cv.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += n;
        true
    }

    fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        drop(used);
        self.cv.notify_all();
    }

    fn wake_all(&self) {
        let _guard = self.used.lock();
        self.cv.notify_all();
    }
}

/// Hands out input indices, never more than `window` ahead of the writer.
struct Gate {
    state: Mutex<(usize, usize)>, // (next to claim, next to write)
    cv: Condvar,
    window: usize,
}

impl Gate {
    fn new(start: usize, window: usize) -> Gate {
        Gate {
            state: Mutex::new((start, start)),
            cv: Condvar::new(),
            window,
        }
    }

    fn claim(&self, end: usize, stop: &AtomicBool) -> Option<usize> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if stop.load(Ordering::Relaxed) || st.0 >= end {
                return None;
            }
            if st.0 < st.1 + self.window {
                st.0 += 1;
                return Some(st.0 - 1);
            }
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn advance(&self, written: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1 = written;
        drop(st);
        self.cv.notify_all();
    }

    fn wake_all(&self) {
        let _guard = self.state.lock();
        self.cv.notify_all();
    }
}
