//! Training metrics: top-k error counting and the JSON-lines log
//! (`metrics.jsonl`), one object per line with a `kind` of `train` (a window of
//! steps), `epoch` (end of an epoch, with validation errors) or `eval`.

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
    fn records_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.jsonl");
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
        let mut w = MetricsWriter::append(&p).unwrap();
        for r in &recs {
            w.write(r).unwrap();
        }
        drop(w);
        assert_eq!(read_metrics(&p).unwrap(), recs);
        std::fs::write(&p, "{\"kind\":\"nope\"}\n").unwrap();
        let err = read_metrics(&p).unwrap_err().to_string();
        assert!(err.contains("m.jsonl:1"), "{err}");
    }
}
