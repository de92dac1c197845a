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
//! - `build.json`: what was built from what (a fingerprint of the inputs and
//!   settings), so a repeated command knows the output is already up to date;
//! - `.build-journal.jsonl` while a build runs: its settings fingerprint, then one
//!   line per finished shard with the input position after it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use serde::{Deserialize, Serialize};
use sv_core::{Geometry, Split};
use sv_shard::{
    Codec, DatasetWriter, MANIFEST_FILE, Manifest, ShardEntry, Subsampling, WriterConfig,
};

use crate::BuildError;
use crate::inputs::{InputSpec, Inputs, discover};

/// Name of the rejects report.
pub const REJECTS_FILE: &str = "rejects.jsonl";
/// Name of the build record.
pub const BUILD_FILE: &str = "build.json";
/// Name of the journal of an unfinished build.
pub const JOURNAL_FILE: &str = ".build-journal.jsonl";

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
    /// Decoding threads.
    pub workers: usize,
    /// Shard size bound in bytes.
    pub max_shard_bytes: u64,
    /// Stop at the first input that cannot be used.
    pub strict: bool,
    /// Replace a dataset in `output` built from other inputs or settings.
    pub force: bool,
}

/// One input file that was skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Path relative to the input folder.
    pub path: String,
    /// Why.
    pub reason: String,
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
    /// Shards kept from an interrupted build.
    pub resumed_shards: usize,
    /// Input images already covered by those shards.
    pub resumed_inputs: usize,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BuildRecord {
    fingerprint: String,
    inputs: usize,
    records: u64,
    rejects: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct JournalHead {
    fingerprint: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct JournalShard {
    shard: ShardEntry,
    /// Index into the image list of the first image not in this or earlier shards.
    next_image: usize,
    /// Rejects among the images before `next_image` not listed by earlier lines.
    rejects: Vec<Reject>,
}

/// Build the dataset described by `config`.
pub fn build(
    config: &BuildConfig,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BuildSummary, BuildError> {
    if config.workers == 0 {
        return Err(BuildError::Input("--workers must be at least 1".into()));
    }
    if !(1..=100).contains(&config.jpeg_quality) {
        return Err(BuildError::Input(format!(
            "JPEG quality {} is outside 1..=100",
            config.jpeg_quality
        )));
    }
    if !(16..=4096).contains(&config.side) {
        return Err(BuildError::Input(format!(
            "size {} is outside 16..=4096",
            config.side
        )));
    }
    let inputs = discover(&config.input)?;
    let out = &config.output;
    std::fs::create_dir_all(out).map_err(|source| BuildError::Io {
        path: out.clone(),
        op: "create directory",
        source,
    })?;
    let writer_config = WriterConfig {
        split: config.split,
        side: config.side,
        codec: config.codec,
        jpeg_quality: config.jpeg_quality,
        jpeg_subsampling: config.jpeg_subsampling,
        classes: inputs.classes.clone(),
        max_shard_bytes: config.max_shard_bytes,
    };
    let fingerprint = fingerprint(&inputs, &writer_config);
    let pre_rejects: Vec<Reject> = inputs
        .skipped
        .iter()
        .map(|s| Reject {
            path: s.rel.clone(),
            reason: s.reason.clone(),
        })
        .collect();
    if config.strict
        && let Some(r) = pre_rejects.first()
    {
        return Err(BuildError::Rejected {
            path: config.input.input.join(&r.path),
            reason: r.reason.clone(),
        });
    }
    let n_inputs = inputs.images.len() + inputs.skipped.len();

    if let Some(summary) = up_to_date(out, &fingerprint, n_inputs)? {
        return Ok(summary);
    }
    let journal = prepare_output(out, &fingerprint, config.force, &|n| {
        writer_config.shard_name(n)
    })?;
    let resumed_shards = journal.shards.len();
    let start = journal.shards.last().map_or(0, |s| s.next_image);
    if start > inputs.images.len() {
        return Err(BuildError::Input(
            "the journal of the interrupted build does not match the inputs; rerun with --force"
                .into(),
        ));
    }
    let mut rejects = pre_rejects;
    let mut done_shards = Vec::new();
    for s in &journal.shards {
        rejects.extend(s.rejects.iter().cloned());
        done_shards.push(s.shard.clone());
    }
    let mut journal_file = journal.file;

    let mut writer = DatasetWriter::resume(out, writer_config.clone(), done_shards)?;
    let writer_config = &writer_config;
    let mut pending_rejects: Vec<Reject> = Vec::new();
    progress(Progress::Start {
        total: inputs.images.len(),
        done: start,
    });

    let geometry = Geometry { side: config.side };
    let window = (config.workers * 8).max(16);
    let gate = Gate::new(start, window);
    let stop = AtomicBool::new(false);
    let images = &inputs.images;
    let (tx, rx) = mpsc::channel::<(usize, Result<Vec<u8>, String>)>();

    let result = std::thread::scope(|scope| -> Result<(), BuildError> {
        for _ in 0..config.workers {
            let tx = tx.clone();
            let (gate, stop) = (&gate, &stop);
            scope.spawn(move || {
                let mut pre =
                    sv_image::Preprocessor::new(sv_image::PrepConfig::with_side(config.side));
                let mut pixels = vec![0u8; geometry.image_bytes()];
                while let Some(i) = gate.claim(images.len(), stop) {
                    let path = config.input.input.join(&images[i].rel);
                    // A worker that died would leave its index unwritten and the writer
                    // waiting for it forever: any panic becomes this file's reject.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        prepare(&mut pre, &path, &mut pixels, writer_config)
                    }))
                    .unwrap_or_else(|_| {
                        pre = sv_image::Preprocessor::new(sv_image::PrepConfig::with_side(
                            config.side,
                        ));
                        Err("internal error: preparing this file panicked".into())
                    });
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let outcome = (|| -> Result<(), BuildError> {
            let mut ready: BTreeMap<usize, Result<Vec<u8>, String>> = BTreeMap::new();
            let mut next = start;
            let mut rejected = rejects.len() + pending_rejects.len();
            while next < images.len() {
                let Ok((i, r)) = rx.recv() else {
                    return Err(BuildError::Input(
                        "a decoding worker stopped unexpectedly".into(),
                    ));
                };
                ready.insert(i, r);
                while let Some(r) = ready.remove(&next) {
                    let img = &images[next];
                    match r {
                        Ok(payload) => {
                            if let Some(closed) = writer.push_encoded(img.label, &payload)? {
                                let shard_rejects = std::mem::take(&mut pending_rejects);
                                rejects.extend(shard_rejects.iter().cloned());
                                journal_append(
                                    &mut journal_file,
                                    out,
                                    &JournalShard {
                                        shard: closed,
                                        next_image: next,
                                        rejects: shard_rejects,
                                    },
                                )?;
                                progress(Progress::Shard {
                                    shards: writer.completed().len(),
                                });
                            }
                        }
                        Err(reason) => {
                            if config.strict {
                                return Err(BuildError::Rejected {
                                    path: config.input.input.join(&img.rel),
                                    reason,
                                });
                            }
                            tracing::debug!(path = %img.rel, %reason, "rejected");
                            pending_rejects.push(Reject {
                                path: img.rel.clone(),
                                reason,
                            });
                            rejected += 1;
                        }
                    }
                    next += 1;
                    gate.advance(next);
                    progress(Progress::Image {
                        done: next,
                        rejected,
                    });
                }
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        gate.wake_all();
        drop(rx);
        outcome
    });
    result?;

    let (last, manifest) = writer.finish_with_last()?;
    if last.is_some() {
        progress(Progress::Shard {
            shards: manifest.shards.len(),
        });
    }
    rejects.append(&mut pending_rejects);
    write_rejects(out, &rejects)?;
    let record = BuildRecord {
        fingerprint,
        inputs: n_inputs,
        records: manifest.records,
        rejects: rejects.len(),
    };
    write_json_atomic(out, BUILD_FILE, &record)?;
    drop(journal_file);
    let _ = std::fs::remove_file(out.join(JOURNAL_FILE));
    Ok(BuildSummary {
        manifest,
        inputs: n_inputs,
        rejects,
        resumed_shards,
        resumed_inputs: start,
        up_to_date: false,
    })
}

/// Decode, resize and encode one input; `Err` is the reject reason.
fn prepare(
    pre: &mut sv_image::Preprocessor,
    path: &Path,
    pixels: &mut [u8],
    config: &WriterConfig,
) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    pre.process(&bytes, pixels).map_err(|e| e.to_string())?;
    let mut payload = Vec::new();
    sv_shard::encode_payload(config, pixels, &mut payload).map_err(|e| e.to_string())?;
    Ok(payload)
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

/// A 64-bit FNV-1a over everything the output depends on.
fn fingerprint(inputs: &Inputs, config: &WriterConfig) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(format!(
        "v1 {} {} {} {} {}",
        config.split, config.side, config.codec, config.jpeg_quality, config.max_shard_bytes
    )
    .as_bytes());
    if config.codec == Codec::Jpeg {
        eat(config.jpeg_subsampling.as_str().as_bytes());
    }
    for c in &inputs.classes {
        eat(c.wnid.as_bytes());
        eat(c.name.as_bytes());
    }
    for i in &inputs.images {
        eat(i.rel.as_bytes());
        eat(&i.label.to_le_bytes());
    }
    for s in &inputs.skipped {
        eat(s.rel.as_bytes());
    }
    format!("{h:016x}")
}

fn up_to_date(
    out: &Path,
    fingerprint: &str,
    n_inputs: usize,
) -> Result<Option<BuildSummary>, BuildError> {
    let path = out.join(BUILD_FILE);
    let Ok(text) = std::fs::read(&path) else {
        return Ok(None);
    };
    let Ok(record) = serde_json::from_slice::<BuildRecord>(&text) else {
        return Ok(None);
    };
    if record.fingerprint != fingerprint || out.join(JOURNAL_FILE).exists() {
        return Ok(None);
    }
    let Ok(manifest) = Manifest::load(out) else {
        return Ok(None);
    };
    let complete = manifest
        .shards
        .iter()
        .all(|s| std::fs::metadata(out.join(&s.name)).is_ok_and(|m| m.len() == s.bytes));
    if !complete {
        return Ok(None);
    }
    let rejects = read_rejects(out).unwrap_or_default();
    Ok(Some(BuildSummary {
        manifest,
        inputs: n_inputs,
        rejects,
        resumed_shards: 0,
        resumed_inputs: 0,
        up_to_date: true,
    }))
}

struct Journal {
    file: std::fs::File,
    shards: Vec<JournalShard>,
}

/// Open the journal of an interrupted build with the same fingerprint, or clear the
/// output folder and start a new one.
fn prepare_output(
    out: &Path,
    fingerprint: &str,
    force: bool,
    shard_name: &dyn Fn(usize) -> String,
) -> Result<Journal, BuildError> {
    let journal_path = out.join(JOURNAL_FILE);
    if let Ok(text) = std::fs::read_to_string(&journal_path) {
        let mut lines = text.lines();
        let same = lines
            .next()
            .and_then(|l| serde_json::from_str::<JournalHead>(l).ok())
            .is_some_and(|h| h.fingerprint == fingerprint);
        if same {
            let mut shards = Vec::new();
            for line in lines {
                // A line cut short by the kill ends the usable journal.
                let Ok(s) = serde_json::from_str::<JournalShard>(line) else {
                    break;
                };
                let intact = std::fs::metadata(out.join(&s.shard.name))
                    .is_ok_and(|m| m.len() == s.shard.bytes)
                    && s.shard.name == shard_name(shards.len());
                if !intact {
                    break;
                }
                shards.push(s);
            }
            // Rewrite the journal with just the usable lines, then append to it.
            let mut body = String::new();
            body.push_str(&journal_line(&JournalHead {
                fingerprint: fingerprint.into(),
            })?);
            for s in &shards {
                body.push_str(&journal_line(s)?);
            }
            let file = write_journal(out, body.as_bytes())?;
            tracing::info!(shards = shards.len(), "resuming an interrupted build");
            return Ok(Journal { file, shards });
        }
        if !force {
            return Err(BuildError::Input(format!(
                "{} holds an interrupted build with other inputs or settings; rerun it with \
                 those, or pass --force to start over",
                out.display()
            )));
        }
    }
    let ours = list_our_files(out)?;
    let foreign = std::fs::read_dir(out)
        .map_err(|source| BuildError::Io {
            path: out.to_path_buf(),
            op: "list",
            source,
        })?
        .filter_map(|e| e.ok())
        .filter(|e| !ours.contains(&e.path()))
        .count();
    if !ours.is_empty() && !force {
        return Err(BuildError::Input(format!(
            "{} already holds a dataset built from other inputs or settings; pass --force \
             to replace it",
            out.display()
        )));
    }
    if foreign > 0 && !force {
        return Err(BuildError::Input(format!(
            "{} is not empty and holds no dataset; choose an empty folder or pass --force",
            out.display()
        )));
    }
    for p in ours {
        std::fs::remove_file(&p).map_err(|source| BuildError::Io {
            path: p.clone(),
            op: "remove",
            source,
        })?;
    }
    let head = journal_line(&JournalHead {
        fingerprint: fingerprint.into(),
    })?;
    let file = write_journal(out, head.as_bytes())?;
    Ok(Journal {
        file,
        shards: Vec::new(),
    })
}

/// Files a build writes (and `--force` may remove): nothing else is touched.
fn list_our_files(out: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let rd = std::fs::read_dir(out).map_err(|source| BuildError::Io {
        path: out.to_path_buf(),
        op: "list",
        source,
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name == MANIFEST_FILE
                || name == REJECTS_FILE
                || name == BUILD_FILE
                || name == JOURNAL_FILE
                || name.ends_with(".svs")
                || name.ends_with(".tmp")
        })
        .collect();
    v.sort();
    Ok(v)
}

fn journal_line<T: Serialize>(v: &T) -> Result<String, BuildError> {
    let mut s = serde_json::to_string(v)
        .map_err(|e| BuildError::Input(format!("journal serialisation: {e}")))?;
    s.push('\n');
    Ok(s)
}

fn write_journal(out: &Path, body: &[u8]) -> Result<std::fs::File, BuildError> {
    let path = out.join(JOURNAL_FILE);
    let io = |op| {
        let path = path.clone();
        move |source| BuildError::Io { path, op, source }
    };
    let mut f = std::fs::File::create(&path).map_err(io("create"))?;
    f.write_all(body).map_err(io("write"))?;
    f.sync_all().map_err(io("sync"))?;
    Ok(f)
}

fn journal_append(
    file: &mut std::fs::File,
    out: &Path,
    entry: &JournalShard,
) -> Result<(), BuildError> {
    let line = journal_line(entry)?;
    let path = out.join(JOURNAL_FILE);
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|source| BuildError::Io {
            path,
            op: "write",
            source,
        })
}

fn write_rejects(out: &Path, rejects: &[Reject]) -> Result<(), BuildError> {
    let mut body = String::new();
    for r in rejects {
        body.push_str(&journal_line(r)?);
    }
    write_atomic(out, REJECTS_FILE, body.as_bytes())
}

/// Read `rejects.jsonl` from a finished build.
pub fn read_rejects(out: &Path) -> Result<Vec<Reject>, BuildError> {
    let path = out.join(REJECTS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| BuildError::Io {
        path: path.clone(),
        op: "read",
        source,
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map_err(|e| BuildError::Input(format!("{}: line {}: {e}", path.display(), n + 1)))
        })
        .collect()
}

fn write_json_atomic<T: Serialize>(out: &Path, name: &str, v: &T) -> Result<(), BuildError> {
    let mut text = serde_json::to_vec_pretty(v)
        .map_err(|e| BuildError::Input(format!("{name} serialisation: {e}")))?;
    text.push(b'\n');
    write_atomic(out, name, &text)
}

fn write_atomic(out: &Path, name: &str, bytes: &[u8]) -> Result<(), BuildError> {
    let path = out.join(name);
    let tmp = out.join(format!("{name}.tmp"));
    let io = |p: &Path, op| {
        let p = p.to_path_buf();
        move |source| BuildError::Io {
            path: p,
            op,
            source,
        }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp, "create"))?;
    f.write_all(bytes).map_err(io(&tmp, "write"))?;
    f.sync_all().map_err(io(&tmp, "sync"))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path, "rename"))
}
