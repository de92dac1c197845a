//! Metrics windows and totals: what the training loop accumulates between log lines,
//! and how device values reach the host without stalling the device queue.
//!
//! A [`Window`] collects the per-step loss and top-1 miss count as device tensors.
//! Closing it starts one small device->host copy of their sums ([`Readback`]) and
//! returns a [`ClosedWindow`]; the loop reads that one when it closes the *next*
//! window, by which time the device has long finished it, so logging never drains the
//! queue. On CUDA the copy lands in pinned memory and an event recorded after it says
//! when it has (sv-c10); on the CPU the values are there at once.
//!
//! [`Totals`] adds up finished windows: images, wall time, time spent waiting for data,
//! and the loss, for an epoch or a whole run. Throughput is total images over total
//! time (never a mean of per-window rates).

use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError};
use crate::metrics::MetricsRecord;

/// Device values on their way to the host.
pub struct Readback {
    host: Tensor,
    landed: Option<sv_c10::Event>,
}

impl std::fmt::Debug for Readback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readback")
            .field("in_flight", &self.landed.is_some())
            .finish()
    }
}

impl Readback {
    /// Starts copying the scalars `values` (0-dim tensors on one device) to the host,
    /// as f64, without waiting for the device.
    pub fn start(values: &[Tensor]) -> Result<Readback> {
        let Some(first) = values.first() else {
            return Ok(Readback {
                host: Tensor::new(),
                landed: None,
            });
        };
        let device = first.device();
        let packed = Tensor::f_stack(values, 0)
            .and_then(|t| t.f_to_kind(Kind::Double))
            .ctx(|| "gather window sums".into())?;
        if device == Device::Cpu {
            return Ok(Readback {
                host: packed,
                landed: None,
            });
        }
        // non_blocking: libtorch allocates the host tensor pinned and queues the copy.
        let host = packed
            .f_to_device_(Device::Cpu, Kind::Double, true, false)
            .ctx(|| "copy window sums to the host".into())?;
        let stream = sv_c10::Stream::current(device).map_err(|source| TrainError::C10 {
            context: "find the compute stream".into(),
            source,
        })?;
        let event = stream.record().map_err(|source| TrainError::C10 {
            context: "mark the window sums' copy".into(),
            source,
        })?;
        Ok(Readback {
            host,
            landed: Some(event),
        })
    }

    /// Whether the values are on the host (never blocks).
    pub fn is_ready(&self) -> bool {
        self.landed
            .as_ref()
            .is_none_or(|e| e.query().unwrap_or(false))
    }

    /// The values, waiting for the device only if the copy has not landed yet.
    pub fn values(self) -> Result<Vec<f64>> {
        if let Some(e) = &self.landed {
            e.synchronize().map_err(|source| TrainError::C10 {
                context: "wait for the window sums".into(),
                source,
            })?;
        }
        if !self.host.defined() {
            return Ok(Vec::new());
        }
        Vec::<f64>::try_from(&self.host).ctx(|| "read window sums".into())
    }
}

/// Where a window ended, for its record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowEnd {
    /// Global step after the window's last step.
    pub step: u64,
    /// Epoch of the window.
    pub epoch: u64,
    /// Learning rate during the window.
    pub lr: f64,
    /// Time the loop waited for data during the window.
    pub waited: Duration,
}

/// Steps since the last metrics line.
#[derive(Debug)]
pub struct Window {
    start: Instant,
    steps: u64,
    images: u64,
    losses: Vec<Tensor>,
    misses: Vec<Tensor>,
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    /// An empty window starting now.
    pub fn new() -> Window {
        Window {
            start: Instant::now(),
            steps: 0,
            images: 0,
            losses: Vec::new(),
            misses: Vec::new(),
        }
    }

    /// Adds one step: its mean loss and its number of top-1 misses (0-dim device
    /// tensors, not read here) over `images` images.
    pub fn add(&mut self, loss: Tensor, misses: Tensor, images: u64) {
        self.losses.push(loss);
        self.misses.push(misses);
        self.steps += 1;
        self.images += images;
    }

    /// Steps in the window.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Ends the window (the caller has synchronised the device first if the wall time
    /// must include all of the window's device work) and starts a new one.
    pub fn close(&mut self, end: WindowEnd) -> Result<ClosedWindow> {
        let done = std::mem::take(self);
        let elapsed = done.start.elapsed();
        let sums = if done.steps == 0 {
            Vec::new()
        } else {
            let sum = |v: &[Tensor]| {
                Tensor::f_stack(v, 0)
                    .and_then(|t| t.f_sum(Kind::Double))
                    .ctx(|| "sum the window".into())
            };
            vec![sum(&done.losses)?, sum(&done.misses)?]
        };
        Ok(ClosedWindow {
            end,
            steps: done.steps,
            images: done.images,
            elapsed,
            sums: Readback::start(&sums)?,
        })
    }
}

/// A finished window whose sums may still be on their way to the host.
#[derive(Debug)]
pub struct ClosedWindow {
    end: WindowEnd,
    steps: u64,
    images: u64,
    elapsed: Duration,
    sums: Readback,
}

/// A finished window, read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowStats {
    /// Steps.
    pub steps: u64,
    /// Images.
    pub images: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Time spent waiting for data.
    pub waited: Duration,
    /// Sum of the steps' mean losses.
    pub loss_sum: f64,
}

impl ClosedWindow {
    /// Whether reading it would not block.
    pub fn is_ready(&self) -> bool {
        self.sums.is_ready()
    }

    /// Reads the sums (waiting for the device if they have not landed) and makes the
    /// window's metrics record. A non-finite loss is [`TrainError::Diverged`].
    pub fn finish(self) -> Result<(MetricsRecord, WindowStats)> {
        let sums = self.sums.values()?;
        let (loss_sum, miss_sum) = match sums[..] {
            [l, m] => (l, m),
            _ => (0.0, 0.0),
        };
        let steps = self.steps.max(1) as f64;
        let loss = loss_sum / steps;
        if !loss.is_finite() {
            return Err(TrainError::Diverged {
                step: self.end.step,
                loss,
            });
        }
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let record = MetricsRecord::Train {
            step: self.end.step,
            epoch: self.end.epoch,
            loss,
            top1_err: miss_sum / self.images.max(1) as f64,
            lr: self.end.lr,
            images_per_s: self.images as f64 / secs,
            data_wait_share: (self.end.waited.as_secs_f64() / secs).min(1.0),
        };
        let stats = WindowStats {
            steps: self.steps,
            images: self.images,
            elapsed: self.elapsed,
            waited: self.end.waited,
            loss_sum,
        };
        Ok((record, stats))
    }
}

/// Finished windows added up (an epoch, or a whole run).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Images trained on.
    pub images: u64,
    /// Steps taken.
    pub steps: u64,
    /// Wall time of the windows.
    pub time: Duration,
    /// Time spent waiting for data.
    pub waited: Duration,
    /// Sum of the steps' mean losses.
    pub loss_sum: f64,
}

impl Totals {
    /// Adds one window.
    pub fn add(&mut self, w: &WindowStats) {
        self.images += w.images;
        self.steps += w.steps;
        self.time += w.elapsed;
        self.waited += w.waited;
        self.loss_sum += w.loss_sum;
    }

    /// Adds another total.
    pub fn merge(&mut self, other: &Totals) {
        self.images += other.images;
        self.steps += other.steps;
        self.time += other.time;
        self.waited += other.waited;
        self.loss_sum += other.loss_sum;
    }

    /// Total images over total time.
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.time.as_secs_f64().max(1e-9)
    }

    /// Share of the time spent waiting for data.
    pub fn wait_share(&self) -> f64 {
        (self.waited.as_secs_f64() / self.time.as_secs_f64().max(1e-9)).min(1.0)
    }

    /// Mean loss per step (NaN without steps).
    pub fn mean_loss(&self) -> f64 {
        if self.steps == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.steps as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(v: f32) -> Tensor {
        Tensor::from(v)
    }

    #[test]
    fn a_window_sums_its_steps_into_one_record() {
        let mut w = Window::new();
        w.add(scalar(2.0), scalar(3.0), 8);
        w.add(scalar(1.0), scalar(1.0), 8);
        assert_eq!(w.steps(), 2);
        let end = WindowEnd {
            step: 12,
            epoch: 1,
            lr: 0.01,
            waited: Duration::ZERO,
        };
        let closed = w.close(end).unwrap();
        assert_eq!(w.steps(), 0, "closing starts a new window");
        assert!(closed.is_ready(), "CPU values are there at once");
        let (rec, stats) = closed.finish().unwrap();
        match rec {
            MetricsRecord::Train {
                step,
                epoch,
                loss,
                top1_err,
                ..
            } => {
                assert_eq!((step, epoch), (12, 1));
                assert_eq!(loss, 1.5);
                assert_eq!(top1_err, 4.0 / 16.0);
            }
            other => panic!("{other:?}"),
        }
        let mut t = Totals::default();
        t.add(&stats);
        t.add(&stats);
        assert_eq!((t.images, t.steps), (32, 4));
        assert_eq!(t.mean_loss(), 1.5);
        assert!(t.images_per_s() > 0.0);
    }

    #[test]
    fn a_non_finite_loss_is_reported_with_its_step() {
        let mut w = Window::new();
        w.add(scalar(f32::NAN), scalar(0.0), 4);
        let end = WindowEnd {
            step: 7,
            epoch: 0,
            lr: 0.01,
            waited: Duration::ZERO,
        };
        let err = w.close(end).unwrap().finish().unwrap_err();
        assert!(matches!(err, TrainError::Diverged { step: 7, .. }), "{err}");
    }
}
