//! Training metrics: top-k error counting and where the records go. The trainer
//! writes each record once to a [`MetricsSink`], which keeps
//! - the JSON-lines log (`metrics.jsonl`), one object per line with a `kind` of `train`
//!   (a window of steps), `epoch` (end of an epoch, with validation errors) or `eval`;
//! - TensorBoard scalars under `tensorboard/` (see [`MetricsSink`] for the tags).

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
            MetricsRecord::Train {
                epoch,
                loss,
                lr,
                images_per_s,
                data_wait_share,
                ..
            } => write!(
                f,
                "epoch {}: loss {loss:.4}, lr {lr:.2e}, {images_per_s:.1} images/s, data wait {:.1}%",
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
        let jsonl = MetricsWriter::append(&out_dir.join(crate::trainer::METRICS_FILE))?;
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
        let p = dir.path().join(crate::trainer::METRICS_FILE);
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
