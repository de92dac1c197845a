//! Training metrics: top-k error counting and where the records go. The trainer
//! writes each record once to a [`MetricsSink`], which keeps
//! - the JSON-lines log (`metrics.jsonl`), one object per line with a `kind` of `train`
//!   (a window of steps), `epoch` (end of an epoch, with validation errors) or `eval`;
//! - TensorBoard scalars under `tensorboard/` (see [`MetricsSink`] for the tags).
//!
//! A resumed run continues the file of the run it resumes: [`drop_after`] first removes
//! what an invocation killed after its last checkpoint wrote past it (the resumed run
//! writes those steps again), so every step is logged once in `metrics.jsonl`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError, io_err};

/// One line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricsRecord {
    /// A window of training steps.
    Train {
        /// Global step at the end of the window.
        step: u64,
        /// Epoch (0-based).
        epoch: u64,
        /// Mean training loss over the window.
        loss: f64,
        /// Training top-1 error over the window (with dropout and augmentation).
        top1_err: f64,
        /// Learning rate.
        lr: f64,
        /// Training images per second over the window.
        images_per_s: f64,
        /// Share of the window's wall time spent waiting for data.
        data_wait_share: f64,
    },
    /// End of an epoch.
    Epoch {
        /// Global step.
        step: u64,
        /// The epoch that ended (0-based).
        epoch: u64,
        /// Mean training loss over the epoch.
        train_loss: f64,
        /// Validation top-1 error (None when no validation set).
        val_top1_err: Option<f64>,
        /// Validation top-5 error.
        val_top5_err: Option<f64>,
        /// Learning rate for the next epoch.
        lr: f64,
        /// Training images per second over the epoch.
        images_per_s: f64,
        /// Share of the epoch's wall time spent waiting for data.
        data_wait_share: f64,
    },
    /// A standalone evaluation.
    Eval {
        /// Global step of the evaluated weights.
        step: u64,
        /// `centre` or `ten-crop`.
        mode: String,
        /// Images evaluated.
        images: u64,
        /// Top-1 error.
        top1_err: f64,
        /// Top-5 error.
        top5_err: f64,
    },
}

/// One line for a person (the log of `supervision train`); epochs counted from 1.
impl std::fmt::Display for MetricsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The step is the window's own: the line may be written a window later
            // (the trainer reads a window's sums once they have landed).
            MetricsRecord::Train {
                step,
                epoch,
                loss,
                lr,
                images_per_s,
                data_wait_share,
                ..
            } => write!(
                f,
                "epoch {}, step {step}: loss {loss:.4}, lr {lr:.2e}, {images_per_s:.1} images/s, data wait {:.1}%",
                epoch + 1,
                100.0 * data_wait_share
            ),
            MetricsRecord::Epoch {
                step,
                epoch,
                train_loss,
                val_top1_err,
                val_top5_err,
                lr,
                images_per_s,
                ..
            } => {
                write!(f, "epoch {} done at step {step}: ", epoch + 1)?;
                if let (Some(t1), Some(t5)) = (val_top1_err, val_top5_err) {
                    write!(
                        f,
                        "val top-1 error {:.2}%, top-5 error {:.2}%, ",
                        100.0 * t1,
                        100.0 * t5
                    )?;
                }
                write!(
                    f,
                    "train loss {train_loss:.4}, {images_per_s:.1} images/s, next lr {lr:.2e}"
                )
            }
            MetricsRecord::Eval {
                step,
                mode,
                images,
                top1_err,
                top5_err,
            } => write!(
                f,
                "{mode} evaluation at step {step} on {images} images: top-1 error {:.2}%, top-5 error {:.2}%",
                100.0 * top1_err,
                100.0 * top5_err
            ),
        }
    }
}

/// Appends records to a JSON-lines file, one flushed line each.
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl std::fmt::Debug for MetricsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl MetricsWriter {
    /// Opens `path` for appending (created if missing).
    pub fn append(path: &Path) -> Result<MetricsWriter> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        Ok(MetricsWriter {
            file,
            path: path.into(),
        })
    }

    /// Writes one record.
    pub fn write(&mut self, record: &MetricsRecord) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| TrainError::Json {
            path: self.path.clone(),
            source: e,
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io_err(&self.path))
    }
}

/// The TensorBoard folder inside a run's output directory.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// Where a run's records go: `metrics.jsonl` and TensorBoard event files, both
/// flushed at every record. TensorBoard tags, step on the x axis:
/// - `train` records: `train/loss`, `train/top1_err`, `train/lr`, `train/images_per_s`,
///   `train/data_wait_share`;
/// - `epoch` records: `val/top1_err`, `val/top5_err` (with a validation set),
///   `epoch/train_loss`, `epoch/images_per_s`, `epoch/data_wait_share`, `epoch/epoch`
///   (1-based, to read epochs off the step axis);
/// - `eval` records: `eval/<mode>/top1_err`, `eval/<mode>/top5_err`.
pub struct MetricsSink {
    jsonl: MetricsWriter,
    tensorboard: sv_tensorboard::EventWriter,
}

impl std::fmt::Debug for MetricsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSink")
            .field("jsonl", &self.jsonl.path)
            .field("tensorboard", &self.tensorboard.path())
            .finish()
    }
}

fn tb_err(e: sv_tensorboard::Error) -> TrainError {
    match e {
        sv_tensorboard::Error::Io { path, source, .. } => TrainError::Io { path, source },
    }
}

impl MetricsSink {
    /// Appends to `out_dir/metrics.jsonl` and starts a new event file in
    /// `out_dir/tensorboard/` for a run that continues after `step` (0 for a new run).
    /// The file opens with a restart mark at `step + 1`: TensorBoard drops the points
    /// after `step` that an interrupted invocation logged past its last checkpoint.
    pub fn open(out_dir: &Path, step: u64) -> Result<MetricsSink> {
        let jsonl = MetricsWriter::append(&out_dir.join(crate::files::METRICS_FILE))?;
        let mut tensorboard =
            sv_tensorboard::EventWriter::create(&out_dir.join(TENSORBOARD_DIR)).map_err(tb_err)?;
        tensorboard
            .session_start(step as i64 + 1)
            .and_then(|()| tensorboard.flush())
            .map_err(tb_err)?;
        Ok(MetricsSink { jsonl, tensorboard })
    }

    /// Writes one record to both.
    pub fn write(&mut self, record: &MetricsRecord) -> Result<()> {
        self.jsonl.write(record)?;
        let f = |v: f64| v as f32;
        let (step, values): (u64, Vec<(String, f32)>) = match record {
            MetricsRecord::Train {
                step,
                loss,
                top1_err,
                lr,
                images_per_s,
                data_wait_share,
                ..
            } => (
                *step,
                vec![
                    ("train/loss".into(), f(*loss)),
                    ("train/top1_err".into(), f(*top1_err)),
                    ("train/lr".into(), f(*lr)),
                    ("train/images_per_s".into(), f(*images_per_s)),
                    ("train/data_wait_share".into(), f(*data_wait_share)),
                ],
            ),
            MetricsRecord::Epoch {
                step,
                epoch,
                train_loss,
                val_top1_err,
                val_top5_err,
                images_per_s,
                data_wait_share,
                ..
            } => {
                let mut v = Vec::new();
                if let Some(e) = val_top1_err {
                    v.push(("val/top1_err".into(), f(*e)));
                }
                if let Some(e) = val_top5_err {
                    v.push(("val/top5_err".into(), f(*e)));
                }
                v.extend([
                    ("epoch/train_loss".into(), f(*train_loss)),
                    ("epoch/images_per_s".into(), f(*images_per_s)),
                    ("epoch/data_wait_share".into(), f(*data_wait_share)),
                    ("epoch/epoch".into(), (*epoch + 1) as f32),
                ]);
                (*step, v)
            }
            MetricsRecord::Eval {
                step,
                mode,
                top1_err,
                top5_err,
                ..
            } => (
                *step,
                vec![
                    (format!("eval/{mode}/top1_err"), f(*top1_err)),
                    (format!("eval/{mode}/top5_err"), f(*top5_err)),
                ],
            ),
        };
        let tagged: Vec<(&str, f32)> = values.iter().map(|(t, v)| (t.as_str(), *v)).collect();
        self.tensorboard
            .scalars(step as i64, &tagged)
            .and_then(|()| self.tensorboard.flush())
            .map_err(tb_err)
    }
}

/// Reads every record of a metrics file; lines of other kinds are an error naming the
/// line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str(&line).map_err(|e| TrainError::Json {
            path: PathBuf::from(format!("{}:{}", path.display(), i + 1)),
            source: e,
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// Whether a line of a run's metrics belongs after the position (step `step`, epoch
/// `epoch` in progress) that a run continues from: `train` lines of later steps,
/// `epoch` lines of this epoch or later, `eval` lines (the final evaluation) from this
/// step on, which the continued run writes again.
fn is_after(record: &MetricsRecord, step: u64, epoch: u64) -> bool {
    match *record {
        MetricsRecord::Train { step: s, .. } => s > step,
        MetricsRecord::Epoch { epoch: e, .. } => e >= epoch,
        MetricsRecord::Eval { step: s, .. } => s >= step,
    }
}

/// The largest metrics file [`drop_after`] reads (ImageNet's 90 epochs at the
/// default interval write about 10 MB).
const MAX_METRICS_BYTES: u64 = 1 << 30;

/// Prepares the metrics file `path` for a run that continues from `step` (epoch
/// `epoch` in progress; 0 and 0 for a new run): removes the records past that
/// position (see [`is_after`]) and a last line cut short by a crash or a full disk,
/// rewriting the file atomically (only when something changes; the lines kept are
/// kept byte for byte). Returns how many lines went. A missing file is fine; a line
/// before the last that is not a metrics record is an error naming it.
pub fn drop_after(path: &Path, step: u64, epoch: u64) -> Result<usize> {
    let bytes = match sv_core::fs::read_regular(path, MAX_METRICS_BYTES) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = 0;
    let mut lines = bytes
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
        .peekable();
    while let Some((i, line)) = lines.next() {
        let complete = line.ends_with(b"\n");
        let text = line.trim_ascii();
        if text.is_empty() {
            kept.extend_from_slice(line);
            continue;
        }
        match serde_json::from_slice::<MetricsRecord>(text) {
            Ok(r) if is_after(&r, step, epoch) => dropped += 1,
            Ok(_) => {
                kept.extend_from_slice(line);
                if !complete {
                    // whole, but its newline was lost: appending must start a new line
                    kept.push(b'\n');
                }
            }
            // the last line, cut short by a crash or a full disk
            Err(_) if !complete && lines.peek().is_none() => dropped += 1,
            Err(e) => {
                return Err(TrainError::Json {
                    path: PathBuf::from(format!("{}:{}", path.display(), i + 1)),
                    source: e,
                });
            }
        }
    }
    if kept != bytes {
        sv_core::fs::write_atomic(path, &kept)?;
    }
    Ok(dropped)
}

/// Counts samples whose label is not the arg-max (top-1) and not among the `k` highest
/// scores (top-k, `k` capped at the class count): returns `(top1_wrong, topk_wrong)`.
pub fn topk_wrong(scores: &Tensor, labels: &Tensor, k: i64) -> Result<(i64, i64)> {
    (|| -> Result<(i64, i64), tch::TchError> {
        let classes = scores.size().last().copied().unwrap_or(1);
        let k = k.min(classes).max(1);
        let (_, idx) = scores.f_topk(k, -1, true, true)?;
        let hits = idx.f_eq_tensor(&labels.f_view([-1, 1])?)?;
        let n = labels.size()[0];
        let top1 = hits.f_narrow(1, 0, 1)?.f_sum(Kind::Int64)?.int64_value(&[]);
        let topk = hits.f_sum(Kind::Int64)?.int64_value(&[]);
        Ok((n - top1, n - topk))
    })()
    .ctx(|| "top-k error".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_top1_and_top5_misses() {
        let scores = Tensor::from_slice(&[
            0.9f32, 0.1, 0.0, 0.0, 0.0, 0.0, // label 0: top-1 hit
            0.1, 0.2, 0.3, 0.4, 0.5, 0.6, //    label 1: rank 5 -> top-5 hit only
            0.6, 0.5, 0.4, 0.3, 0.2, 0.1, //    label 5: last -> both miss
        ])
        .reshape([3, 6]);
        let labels = Tensor::from_slice(&[0i64, 1, 5]);
        assert_eq!(topk_wrong(&scores, &labels, 5).unwrap(), (2, 1));
        // Fewer classes than k: everything is in the top-k.
        let s2 = Tensor::from_slice(&[0.2f32, 0.8]).reshape([1, 2]);
        assert_eq!(
            topk_wrong(&s2, &Tensor::from_slice(&[0i64]), 5).unwrap(),
            (1, 0)
        );
    }

    fn train(step: u64, epoch: u64) -> MetricsRecord {
        MetricsRecord::Train {
            step,
            epoch,
            loss: 1.0 / step as f64,
            top1_err: 0.5,
            lr: 0.01,
            images_per_s: 10.0,
            data_wait_share: 0.0,
        }
    }

    fn epoch_end(step: u64, epoch: u64) -> MetricsRecord {
        MetricsRecord::Epoch {
            step,
            epoch,
            train_loss: 1.0,
            val_top1_err: None,
            val_top5_err: None,
            lr: 0.01,
            images_per_s: 10.0,
            data_wait_share: 0.0,
        }
    }

    fn lines(records: &[MetricsRecord]) -> String {
        records
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect()
    }

    /// A run killed at step 7 after its checkpoint at step 4 (epoch 1 in progress,
    /// 3 steps an epoch), then one resumed from step 4: the lines past step 4 go.
    #[test]
    fn drop_after_keeps_exactly_the_lines_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let before = [train(2, 0), train(3, 0), epoch_end(3, 0), train(4, 1)];
        let after = [train(6, 1), epoch_end(6, 1), train(7, 2)];
        let all: Vec<_> = before.iter().chain(&after).cloned().collect();
        std::fs::write(&p, lines(&all) + "{\"kind\":\"train\",\"st").unwrap();
        assert_eq!(drop_after(&p, 4, 1).unwrap(), after.len() + 1);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), lines(&before));
        // nothing past the position: the file is left as it is
        assert_eq!(drop_after(&p, 4, 1).unwrap(), 0);
        assert_eq!(read_metrics(&p).unwrap(), before);
        // at an epoch boundary (after epoch 0's line, step 3) and for a new run
        assert_eq!(drop_after(&p, 3, 1).unwrap(), 1);
        assert_eq!(read_metrics(&p).unwrap(), before[..3]);
        assert_eq!(drop_after(&p, 0, 0).unwrap(), 3);
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        assert_eq!(drop_after(&dir.path().join("none.jsonl"), 5, 0).unwrap(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }

    /// The final evaluation at the last checkpoint's step is written again by a run
    /// that continues from there; one whose newline was lost keeps its record.
    #[test]
    fn drop_after_handles_evaluations_and_lost_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let eval = MetricsRecord::Eval {
            step: 6,
            mode: "ten-crop".into(),
            images: 4,
            top1_err: 0.5,
            top5_err: 0.0,
        };
        std::fs::write(&p, lines(&[train(6, 1), epoch_end(6, 1), eval])).unwrap();
        assert_eq!(drop_after(&p, 6, 2).unwrap(), 1);
        assert_eq!(read_metrics(&p).unwrap(), [train(6, 1), epoch_end(6, 1)]);
        let text = lines(&[train(2, 0), train(4, 0)]);
        std::fs::write(&p, text.trim_end()).unwrap();
        assert_eq!(drop_after(&p, 4, 0).unwrap(), 0);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    /// A damaged line that is not the last is not silently dropped.
    #[test]
    fn drop_after_refuses_a_damaged_line_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        let text = lines(&[train(2, 0)]) + "garbage\n" + &lines(&[train(4, 0)]);
        std::fs::write(&p, &text).unwrap();
        let err = drop_after(&p, 2, 0).unwrap_err();
        assert!(err.to_string().contains("metrics.jsonl:2"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[test]
    fn records_reach_the_jsonl_file_and_tensorboard() {
        let dir = tempfile::tempdir().unwrap();
        let recs = vec![
            MetricsRecord::Train {
                step: 10,
                epoch: 0,
                loss: 2.3,
                top1_err: 0.9,
                lr: 0.01,
                images_per_s: 100.0,
                data_wait_share: 0.01,
            },
            MetricsRecord::Epoch {
                step: 20,
                epoch: 0,
                train_loss: 2.0,
                val_top1_err: Some(0.5),
                val_top5_err: None,
                lr: 0.001,
                images_per_s: 90.0,
                data_wait_share: 0.02,
            },
        ];
        let mut w = MetricsSink::open(dir.path(), 0).unwrap();
        for r in &recs {
            w.write(r).unwrap();
        }
        drop(w);
        let p = dir.path().join(crate::files::METRICS_FILE);
        // The event file holds every tag (tests/reader.rs of sv-tensorboard reads such
        // files with TensorBoard's own reader).
        let tb: Vec<_> = std::fs::read_dir(dir.path().join(TENSORBOARD_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(tb.len(), 1);
        let bytes = std::fs::read(&tb[0]).unwrap();
        for tag in [
            "train/loss",
            "train/lr",
            "train/images_per_s",
            "train/data_wait_share",
            "val/top1_err",
            "epoch/train_loss",
        ] {
            assert!(
                bytes.windows(tag.len()).any(|w| w == tag.as_bytes()),
                "{tag}"
            );
        }
        assert!(
            !bytes.windows(12).any(|w| w == b"val/top5_err"),
            "no top-5 given"
        );
        assert_eq!(read_metrics(&p).unwrap(), recs);
        std::fs::write(&p, "{\"kind\":\"nope\"}\n").unwrap();
        let err = read_metrics(&p).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl:1"), "{err}");
    }
}
