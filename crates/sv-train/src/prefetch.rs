//! Double-buffered prefetch. A background thread pulls batch i+1 from the data source
//! and stages it as host tensors ([`HostBatch::stage`]; in page-locked memory when CUDA
//! is present, so the device copy can be asynchronous) while the training thread runs
//! step i; the training thread then starts the copy to the device without blocking
//! ([`StagedBatch::upload`], through a [`Transfer`]) and measures how long it waited
//! for the thread. On CUDA the transfer is a [`CopyStreamTransfer`]: the copy runs on
//! a side stream while the compute stream still runs step i, and the compute stream
//! waits for it with an event, so copy and compute overlap on the GPU. On the CPU (and
//! with the copy stream turned off) [`CurrentStream`] copies in line.
//!
//! Pinned blocks come from libtorch's caching host allocator, which records an event
//! on every asynchronous copy out of a block and reuses the block only after that event
//! has completed, so a staged batch may be dropped as soon as its copy is enqueued.
//! `Tensor` is `Send` but not `Sync`: each staged batch is owned by one thread at a time.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

use crate::error::{Result, TorchContext, TrainError};
use crate::input::DeviceNorm;

/// One batch on the host, ready to be copied to the device.
pub struct StagedBatch {
    /// uint8 `[N, H, W, 3]` crops.
    pub images: Tensor,
    /// int64 `[N]` labels.
    pub labels: Tensor,
    /// bool `[N]`: flip these horizontally on the device (None: already flipped).
    pub flips: Option<Tensor>,
    /// float `[N, 3]` RGB lighting offsets, 0-255 scale (None: no lighting).
    pub lighting: Option<Tensor>,
    /// int64 `[N, 3]`: each crop's left column and top row in the stored image and
    /// whether it ends up mirrored (for a per-pixel mean image).
    pub windows: Option<Tensor>,
    /// Epoch this batch belongs to.
    pub epoch: u64,
    /// Index of this batch within its epoch.
    pub index: u64,
}

impl std::fmt::Debug for StagedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedBatch")
            .field("epoch", &self.epoch)
            .field("index", &self.index)
            .field("size", &self.images.size())
            .finish()
    }
}

/// A batch on the device: normalised input and labels.
pub struct DeviceBatch {
    /// float `[N, 3, H, W]`.
    pub input: Tensor,
    /// int64 `[N]`.
    pub labels: Tensor,
    /// Epoch this batch belongs to.
    pub epoch: u64,
    /// Index within the epoch.
    pub index: u64,
}

/// Where staged host tensors live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMemory {
    /// Ordinary pageable memory (CPU training, or no CUDA).
    Pageable,
    /// Page-locked memory for asynchronous copies to a CUDA device. Only valid when
    /// `tch::Cuda::is_available()`: pinning fails without a driver.
    Pinned,
}

impl HostMemory {
    /// Pinned exactly when training on a CUDA device.
    pub fn for_device(device: Device) -> HostMemory {
        if device.is_cuda() && tch::Cuda::is_available() {
            HostMemory::Pinned
        } else {
            HostMemory::Pageable
        }
    }
}

/// One batch in host buffers that the caller keeps (the loader's recycled buffers):
/// what [`HostBatch::stage`] copies into tensors for the device.
#[derive(Clone, Copy, Debug)]
pub struct HostBatch<'a> {
    /// `labels.len()` HWC crops of `side x side x 3` bytes, back to back.
    pub images: &'a [u8],
    /// Crop side.
    pub side: usize,
    /// One label per crop.
    pub labels: &'a [i64],
    /// Flip these horizontally on the device (None: already flipped, or no flips).
    pub flips: Option<&'a [bool]>,
    /// RGB lighting offsets, 3 per crop, 0-255 scale (None: no lighting).
    pub lighting: Option<&'a [f32]>,
    /// Each crop's (left column, top row, mirrored) in the stored image, for a
    /// per-pixel mean image.
    pub windows: Option<&'a [[i64; 3]]>,
    /// Epoch of the batch.
    pub epoch: u64,
    /// Index of the batch within its epoch.
    pub index: u64,
}

impl HostBatch<'_> {
    fn bad(&self, what: String) -> TrainError {
        TrainError::Batch {
            epoch: self.epoch,
            index: self.index,
            what,
        }
    }

    /// Copies the batch into host tensors in `memory`, checking that the lengths agree.
    pub fn stage(&self, memory: HostMemory) -> Result<StagedBatch> {
        let n = self.labels.len();
        let side = self.side;
        if self.images.len() != n * side * side * 3 {
            return Err(self.bad(format!(
                "{} image bytes for {n} crops of {side}x{side}",
                self.images.len()
            )));
        }
        if self.flips.is_some_and(|f| f.len() != n)
            || self.lighting.is_some_and(|l| l.len() != n * 3)
            || self.windows.is_some_and(|w| w.len() != n)
        {
            return Err(self.bad(format!(
                "flip/lighting/window lengths do not match {n} labels"
            )));
        }
        let dims = [n as i64, side as i64, side as i64, 3];
        let images = match memory {
            HostMemory::Pageable => Tensor::f_from_data_size(self.images, &dims, Kind::Uint8),
            // from_blob wraps the borrowed bytes without a copy; pinning then makes the
            // one copy into a pinned block, which the returned tensor owns.
            HostMemory::Pinned => {
                // SAFETY: `self.images` outlives the blob tensor, which is dropped before
                // return, and its length was checked against `dims` above.
                let blob = unsafe {
                    Tensor::f_from_blob(self.images.as_ptr(), &dims, &[], Kind::Uint8, Device::Cpu)
                };
                blob.and_then(pin)
            }
        }
        .ctx(|| "stage images".into())?;
        let keep = |t: Tensor| match memory {
            HostMemory::Pageable => Ok(t),
            HostMemory::Pinned => pin(t),
        };
        let labels = Tensor::f_from_slice(self.labels)
            .and_then(keep)
            .ctx(|| "stage labels".into())?;
        let flips = self
            .flips
            .map(|f| Tensor::f_from_slice(f).and_then(keep))
            .transpose()
            .ctx(|| "stage flips".into())?;
        let lighting = self
            .lighting
            .map(|l| {
                Tensor::f_from_slice(l)
                    .and_then(|t| t.f_reshape([n as i64, 3]))
                    .and_then(keep)
            })
            .transpose()
            .ctx(|| "stage lighting".into())?;
        let windows = self
            .windows
            .map(|w| {
                Tensor::f_from_slice(w.as_flattened())
                    .and_then(|t| t.f_reshape([n as i64, 3]))
                    .and_then(keep)
            })
            .transpose()
            .ctx(|| "stage windows".into())?;
        Ok(StagedBatch {
            images,
            labels,
            flips,
            lighting,
            windows,
            epoch: self.epoch,
            index: self.index,
        })
    }
}

/// A pinned copy of `t` from libtorch's caching host allocator. `_pin_memory` is the
/// op `Tensor::pin_memory` calls; called directly it does not print the deprecation
/// warning (two lines per call) that `pin_memory(device)` gives in torch 2.x, and tch
/// cannot call `pin_memory` without a device.
fn pin(t: Tensor) -> Result<Tensor, tch::TchError> {
    t.f_internal_pin_memory(Device::Cuda(0))
}

/// How staged batches reach the device: the piece a CUDA copy stream plugs into.
///
/// An implementation enqueues the copies of a batch's host tensors and returns device
/// tensors that work enqueued afterwards on the compute stream may use (a copy stream
/// makes the compute stream wait on an event recorded after its copies).
pub trait Transfer {
    /// Copies `host` tensors to `device` without blocking the host where possible.
    fn to_device(&mut self, host: &[&Tensor], device: Device) -> Result<Vec<Tensor>>;
}

/// Copies on libtorch's current stream: the CPU path, and the CUDA path without a
/// separate copy stream (a copy from pinned memory is then asynchronous for the host,
/// but the device runs it between the kernels queued before and after it).
#[derive(Clone, Copy, Debug, Default)]
pub struct CurrentStream;

impl Transfer for CurrentStream {
    fn to_device(&mut self, host: &[&Tensor], device: Device) -> Result<Vec<Tensor>> {
        let non_blocking = device.is_cuda();
        host.iter()
            .map(|t| {
                t.f_to_device_(device, t.kind(), non_blocking, false)
                    .ctx(|| "copy a batch to the device".into())
            })
            .collect()
    }
}

impl StagedBatch {
    /// Every crop window lies inside a `side` square image (checked on the host,
    /// before anything indexes the mean image with it on the device).
    fn check_windows(&self, side: i64) -> Result<()> {
        let bad = |what: String| TrainError::Batch {
            epoch: self.epoch,
            index: self.index,
            what,
        };
        let windows = self
            .windows
            .as_ref()
            .ok_or_else(|| bad("no crop windows for the mean image".into()))?;
        let size = self.images.size();
        let (h, w) = (size[1], size[2]);
        let flat: Vec<i64> = windows
            .f_flatten(0, -1)
            .and_then(|t| Vec::<i64>::try_from(&t))
            .ctx(|| "read crop windows".into())?;
        for t in flat.chunks_exact(3) {
            if t[0] < 0 || t[1] < 0 || t[0] + w > side || t[1] + h > side {
                return Err(bad(format!(
                    "crop window {w}x{h} at ({}, {}) is outside the {side}x{side} mean image",
                    t[0], t[1]
                )));
            }
        }
        Ok(())
    }

    /// Starts the copy to `device` through `transfer` and enqueues the normalisation
    /// there.
    pub fn upload(
        self,
        device: Device,
        norm: &DeviceNorm,
        transfer: &mut dyn Transfer,
    ) -> Result<DeviceBatch> {
        if let Some(side) = norm.mean_image_side() {
            self.check_windows(side)?;
        }
        let optional = [&self.flips, &self.lighting, &self.windows];
        let mut host = vec![&self.images, &self.labels];
        host.extend(optional.iter().filter_map(|t| t.as_ref()));
        let mut copied = transfer.to_device(&host, device)?.into_iter();
        let mut next = || {
            copied
                .next()
                .ok_or_else(|| TrainError::Config("the transfer returned too few tensors".into()))
        };
        let (images, labels) = (next()?, next()?);
        let [flips, lighting, windows] = optional.map(|t| t.as_ref().map(|_| next()).transpose());
        let (flips, lighting, windows) = (flips?, lighting?, windows?);
        let input = norm.apply(&images, flips.as_ref(), lighting.as_ref(), windows.as_ref())?;
        Ok(DeviceBatch {
            input,
            labels,
            epoch: self.epoch,
            index: self.index,
        })
    }
}

/// Copies on a CUDA side stream (sv-c10's [`sv_c10::CopyStream`]): the copies of batch
/// i+1 run on the copy engine while the compute stream still runs step i, and the
/// compute stream waits (on the device, not the host) for an event recorded after
/// them before it normalises the batch.
pub struct CopyStreamTransfer {
    stream: sv_c10::CopyStream,
    /// Host tensors of the last uploads, kept until their copies are surely over
    /// (dropping them waits for the copy; two batches back it has long finished).
    in_flight: std::collections::VecDeque<sv_c10::Sources>,
}

impl std::fmt::Debug for CopyStreamTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyStreamTransfer")
            .field("device", &self.stream.device())
            .finish()
    }
}

impl CopyStreamTransfer {
    /// A copy stream on the CUDA `device` (an error on the CPU, where there is
    /// nothing to overlap: use [`CurrentStream`]).
    pub fn new(device: Device) -> Result<CopyStreamTransfer> {
        let stream = sv_c10::CopyStream::new(device).map_err(|source| TrainError::C10 {
            context: format!("a copy stream on {device:?}"),
            source,
        })?;
        Ok(CopyStreamTransfer {
            stream,
            in_flight: std::collections::VecDeque::with_capacity(3),
        })
    }
}

impl Transfer for CopyStreamTransfer {
    fn to_device(&mut self, host: &[&Tensor], _device: Device) -> Result<Vec<Tensor>> {
        let c10 = |context: &str| {
            let context = context.to_string();
            move |source| TrainError::C10 { context, source }
        };
        let upload = self
            .stream
            .upload(host.iter().map(|t| t.shallow_clone()).collect())
            .map_err(c10("copy a batch on the copy stream"))?;
        let (device, sources) = upload
            .wait()
            .map_err(c10("make the compute stream wait for the copy"))?;
        self.in_flight.push_back(sources);
        while self.in_flight.len() > 2 {
            if let Some(old) = self.in_flight.pop_front() {
                old.release()
                    .map_err(c10("wait for an earlier batch's copy"))?;
            }
        }
        Ok(device)
    }
}

/// The host->device path for `device`: a copy stream on CUDA when `copy_stream`,
/// otherwise the current stream.
pub fn transfer_for(device: Device, copy_stream: bool) -> Result<Box<dyn Transfer>> {
    if device.is_cuda() && copy_stream {
        Ok(Box::new(CopyStreamTransfer::new(device)?))
    } else {
        Ok(Box::new(CurrentStream))
    }
}

/// The background thread and the channel it fills.
pub struct Prefetcher {
    rx: Option<Receiver<Result<StagedBatch>>>,
    handle: Option<JoinHandle<()>>,
    waited: Duration,
}

impl std::fmt::Debug for Prefetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetcher")
            .field("waited", &self.waited)
            .finish()
    }
}

impl Prefetcher {
    /// Starts a thread draining `source`, keeping up to `depth` staged batches ready
    /// (1 gives double buffering: one in the channel while the consumer holds another).
    pub fn spawn<I>(source: I, depth: usize) -> Result<Prefetcher>
    where
        I: Iterator<Item = Result<StagedBatch>> + Send + 'static,
    {
        let (tx, rx): (SyncSender<Result<StagedBatch>>, _) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("sv-prefetch".into())
            .spawn(move || {
                for item in source {
                    let failed = item.is_err();
                    // A closed channel means the consumer is gone: stop pulling.
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|_| TrainError::Thread("sv-prefetch"))?;
        Ok(Prefetcher {
            rx: Some(rx),
            handle: Some(handle),
            waited: Duration::ZERO,
        })
    }

    /// The next batch, blocking until the thread has it; None at the end of the source.
    /// The time spent blocked accumulates in [`Prefetcher::take_waited`].
    pub fn next_batch(&mut self) -> Option<Result<StagedBatch>> {
        let rx = self.rx.as_ref()?;
        let t = Instant::now();
        let item = rx.recv().ok();
        self.waited += t.elapsed();
        if item.is_none() {
            // The thread ended; a panic there is an error, not an end of data.
            if let Some(h) = self.handle.take()
                && h.join().is_err()
            {
                return Some(Err(TrainError::Thread("sv-prefetch")));
            }
        }
        item
    }

    /// Time blocked in [`Prefetcher::next_batch`] since the last call.
    pub fn take_waited(&mut self) -> Duration {
        std::mem::take(&mut self.waited)
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail, so it stops after
        // at most the batch it is producing.
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn host<'a>(images: &'a [u8], side: usize, labels: &'a [i64]) -> HostBatch<'a> {
        HostBatch {
            images,
            side,
            labels,
            flips: None,
            lighting: None,
            windows: None,
            epoch: 0,
            index: 0,
        }
    }

    fn batch(i: u64) -> Result<StagedBatch> {
        let px = vec![i as u8; 2 * 2 * 2 * 3];
        HostBatch {
            index: i,
            ..host(&px, 2, &[i as i64, 0])
        }
        .stage(HostMemory::Pageable)
    }

    #[test]
    fn delivers_in_order_then_ends() {
        let mut p = Prefetcher::spawn((0..20).map(batch), 1).unwrap();
        for i in 0..20 {
            let b = p.next_batch().unwrap().unwrap();
            assert_eq!(b.index, i);
            assert_eq!(b.labels.int64_value(&[0]), i as i64);
            assert_eq!(b.images.int64_value(&[0, 0, 0, 0]), i as i64);
        }
        assert!(p.next_batch().is_none());
        assert!(p.next_batch().is_none());
    }

    #[test]
    fn stays_bounded_and_stops_when_dropped() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let source = (0..).map(move |i| {
            counter.fetch_add(1, Ordering::SeqCst);
            batch(i)
        });
        let mut p = Prefetcher::spawn(source, 1).unwrap();
        let _ = p.next_batch().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // One taken, one in the channel, at most one being sent.
        assert!(
            pulled.load(Ordering::SeqCst) <= 3,
            "pulled {}",
            pulled.load(Ordering::SeqCst)
        );
        drop(p); // joins the thread: an endless source must not hang the drop
        let after = pulled.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pulled.load(Ordering::SeqCst), after, "thread stopped");
    }

    #[test]
    fn errors_reach_the_consumer_and_end_the_stream() {
        let source = (0..5).map(|i| {
            if i == 2 {
                Err(TrainError::EmptyEpoch)
            } else {
                batch(i)
            }
        });
        let mut p = Prefetcher::spawn(source, 1).unwrap();
        assert!(p.next_batch().unwrap().is_ok());
        assert!(p.next_batch().unwrap().is_ok());
        assert!(matches!(p.next_batch(), Some(Err(TrainError::EmptyEpoch))));
        assert!(p.next_batch().is_none());
    }

    #[test]
    fn panics_in_the_source_are_errors() {
        let source = (0..3).map(|i| {
            if i == 1 {
                panic!("source broke")
            } else {
                batch(i)
            }
        });
        let mut p = Prefetcher::spawn(source, 1).unwrap();
        assert!(p.next_batch().unwrap().is_ok());
        assert!(matches!(p.next_batch(), Some(Err(TrainError::Thread(_)))));
    }

    #[test]
    fn copy_streams_are_for_cuda_only() {
        assert!(
            transfer_for(Device::Cpu, true).is_ok(),
            "the CPU copies in place"
        );
        if !tch::Cuda::is_available() {
            assert!(matches!(
                CopyStreamTransfer::new(Device::Cpu),
                Err(TrainError::C10 { .. })
            ));
        }
    }

    #[test]
    fn stage_checks_lengths() {
        let labels = [1, 2, 3, 4];
        let short = host(&[0u8; 11], 1, &labels).stage(HostMemory::Pageable);
        assert!(
            matches!(&short, Err(TrainError::Batch { what, .. }) if what.contains("11 image bytes")),
            "{short:?}"
        );
        let flips = HostBatch {
            flips: Some(&[true]),
            ..host(&[0u8; 12], 1, &labels)
        };
        assert!(flips.stage(HostMemory::Pageable).is_err());
        let b = host(&[7u8; 12], 1, &labels)
            .stage(HostMemory::Pageable)
            .unwrap();
        let stats = crate::input::Normalization {
            mean: [0.0; 3],
            ..Default::default()
        };
        let norm =
            crate::input::DeviceNorm::new(&stats, crate::input::InputScale::Raw, Device::Cpu)
                .unwrap();
        let d = b.upload(Device::Cpu, &norm, &mut CurrentStream).unwrap();
        assert_eq!(d.input.size(), [4, 3, 1, 1]);
        assert_eq!(d.input.double_value(&[3, 2, 0, 0]), 7.0);
        assert_eq!(Vec::<i64>::try_from(&d.labels).unwrap(), labels);
    }
}
