//! CUDA streams and events (c10's device-generic API), and the copy stream the
//! trainer's prefetch uses: host->device copies on a side stream that the compute
//! stream waits for with an event, so copy and compute overlap on the GPU.
//!
//! # Ownership of the host buffers a copy reads
//!
//! A non-blocking copy from pinned memory returns before the GPU has read the source.
//! [`CopyStream::upload`] therefore takes the host tensors by value and keeps them:
//! first in the [`Upload`], then in the [`Sources`] that [`Upload::wait`] hands back.
//! Dropping an `Upload` or a `Sources` whose copy has not completed blocks the host
//! until it has (an event synchronise), so no path frees memory the GPU still reads.
//! Keep the `Sources` until the next upload is queued (or drop it: the block is then
//! usually already over). Pinned blocks from libtorch's caching host allocator
//! (`Tensor::pin_memory`) are additionally protected by the allocator, which records
//! an event on the copy stream and reuses the block only after it; memory wrapped with
//! `Tensor::from_blob` has no such protection, so the rule above is what makes it safe.
//!
//! The device tensors are allocated by the caching allocator on the copy stream;
//! `Upload::wait` records their use on the waiting stream (`record_stream`), so their
//! memory is not handed out again while kernels queued there may still read it.
//!
//! On the CPU there is nothing to overlap: every constructor here returns
//! [`C10Error::NotCuda`] for a CPU device, and a CUDA device on a machine without a
//! driver gives libtorch's error.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;

use tch::{Device, Tensor};

use crate::error::{C10Error, Result, call};
use crate::ffi::{self, RawStream};

fn cuda_index(op: &'static str, device: Device) -> Result<i64> {
    match device {
        Device::Cuda(i) => Ok(i as i64),
        other => Err(C10Error::NotCuda {
            op,
            device: format!("{other:?}").to_lowercase(),
        }),
    }
}

/// Number of CUDA devices libtorch sees (0 on a machine without a driver).
pub fn cuda_device_count() -> Result<usize> {
    let mut n = 0i64;
    // SAFETY: plain out-parameters.
    call("count CUDA devices", |err| unsafe {
        ffi::sv_c10_cuda_device_count(&mut n, err)
    })?;
    Ok(n.max(0) as usize)
}

/// A CUDA stream (a c10::Stream): a copyable handle; pool streams live as long as the
/// process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    raw: RawStream,
}

impl Stream {
    /// A stream from libtorch's pool of side streams on `device` (round robin over 32
    /// per priority), as `torch.cuda.Stream()` gives.
    pub fn from_pool(device: Device, high_priority: bool) -> Result<Stream> {
        const OP: &str = "get a CUDA stream from the pool";
        let index = cuda_index(OP, device)?;
        let mut raw = [0i64; 3];
        // SAFETY: `raw` has room for the packed triple.
        call(OP, |err| unsafe {
            ffi::sv_c10_stream_from_pool(index, c_int::from(high_priority), raw.as_mut_ptr(), err)
        })?;
        Ok(Stream { raw })
    }

    /// The calling thread's current stream on `device` (the default stream unless a
    /// [`StreamGuard`] changed it): where tch's operations are queued.
    pub fn current(device: Device) -> Result<Stream> {
        const OP: &str = "get the current CUDA stream";
        let index = cuda_index(OP, device)?;
        let mut raw = [0i64; 3];
        // SAFETY: `raw` has room for the packed triple.
        call(OP, |err| unsafe {
            ffi::sv_c10_stream_current(index, raw.as_mut_ptr(), err)
        })?;
        Ok(Stream { raw })
    }

    /// The device the stream belongs to.
    pub fn device(&self) -> Device {
        Device::Cuda(self.raw[1].max(0) as usize)
    }

    /// Blocks the host until everything queued on the stream has run.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: `raw` is a packed stream.
        call("synchronise a CUDA stream", |err| unsafe {
            ffi::sv_c10_stream_synchronize(self.raw.as_ptr(), err)
        })
    }

    /// Whether everything queued on the stream has run.
    pub fn query(&self) -> Result<bool> {
        let mut done = 0;
        // SAFETY: `raw` is a packed stream.
        call("query a CUDA stream", |err| unsafe {
            ffi::sv_c10_stream_query(self.raw.as_ptr(), &mut done, err)
        })?;
        Ok(done != 0)
    }

    /// Records a new event at the current end of this stream's queue.
    pub fn record(&self) -> Result<Event> {
        let event = Event::new()?;
        event.record(self)?;
        Ok(event)
    }

    /// Makes work queued on this stream from now on wait (on the device) for `event`.
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        event.block(self)
    }

    /// Makes this stream wait (on the device) for everything queued on `other` so far.
    pub fn wait_stream(&self, other: &Stream) -> Result<()> {
        self.wait_event(&other.record()?)
    }

    /// Marks `tensor`'s memory as used by work queued on this stream, so the caching
    /// allocator does not reuse it before that work has run (`Tensor.record_stream`).
    pub fn record_tensor(&self, tensor: &Tensor) -> Result<()> {
        // SAFETY: the tensor pointer is valid for the call; the op does not keep it.
        call("record a tensor's use on a stream", |err| unsafe {
            ffi::sv_c10_record_stream(tensor.as_ptr() as *mut _, self.raw.as_ptr(), err)
        })
    }
}

/// Makes a stream the calling thread's current stream on its device until dropped
/// (`torch.cuda.stream(s)`): tch operations on that device queue on it meanwhile.
#[derive(Debug)]
pub struct StreamGuard {
    previous: Stream,
}

impl StreamGuard {
    /// Makes `stream` current.
    pub fn new(stream: &Stream) -> Result<StreamGuard> {
        let mut prev = [0i64; 3];
        // SAFETY: packed streams in and out.
        call("make a CUDA stream current", |err| unsafe {
            ffi::sv_c10_stream_exchange(stream.raw.as_ptr(), prev.as_mut_ptr(), err)
        })?;
        Ok(StreamGuard {
            previous: Stream { raw: prev },
        })
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut ignored = [0i64; 3];
        // Restoring a stream that was current a moment ago cannot fail in practice;
        // there is nobody to report to in a drop.
        // SAFETY: packed streams in and out.
        let _ = call("restore the CUDA stream", |err| unsafe {
            ffi::sv_c10_stream_exchange(self.previous.raw.as_ptr(), ignored.as_mut_ptr(), err)
        });
    }
}

/// A CUDA event (a c10::Event), created on its first record.
pub struct Event {
    ptr: NonNull<c_void>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event").finish_non_exhaustive()
    }
}

// SAFETY: a c10::Event is a plain owner of a cudaEvent_t, which any thread may use;
// the Rust type gives one thread access at a time (no Sync).
unsafe impl Send for Event {}

impl Event {
    /// An event not yet recorded (CUDA creates it lazily at the first record).
    pub fn new() -> Result<Event> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-parameter.
        call("create a CUDA event", |err| unsafe {
            ffi::sv_c10_event_new(&mut p, err)
        })?;
        let ptr = NonNull::new(p).ok_or(C10Error::Torch {
            op: "create a CUDA event",
            kind: crate::ErrorKind::Other,
            message: "null event".into(),
        })?;
        Ok(Event { ptr })
    }

    /// Records the event at the current end of `stream`'s queue.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        // SAFETY: live event, packed stream.
        call("record a CUDA event", |err| unsafe {
            ffi::sv_c10_event_record(self.ptr.as_ptr(), stream.raw.as_ptr(), err)
        })
    }

    /// Makes `stream` wait on the device for this event (the host does not block).
    pub fn block(&self, stream: &Stream) -> Result<()> {
        // SAFETY: live event, packed stream.
        call("make a CUDA stream wait for an event", |err| unsafe {
            ffi::sv_c10_event_block(self.ptr.as_ptr(), stream.raw.as_ptr(), err)
        })
    }

    /// Whether the recorded work has completed (true for an unrecorded event).
    pub fn query(&self) -> Result<bool> {
        let mut done = 0;
        // SAFETY: live event.
        call("query a CUDA event", |err| unsafe {
            ffi::sv_c10_event_query(self.ptr.as_ptr(), &mut done, err)
        })?;
        Ok(done != 0)
    }

    /// Blocks the host until the recorded work has completed.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: live event.
        call("wait for a CUDA event", |err| unsafe {
            ffi::sv_c10_event_synchronize(self.ptr.as_ptr(), err)
        })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by sv_c10_event_new, freed once.
        unsafe { ffi::sv_c10_event_free(self.ptr.as_ptr()) }
    }
}

/// A side stream for host->device copies on one CUDA device.
#[derive(Clone, Copy, Debug)]
pub struct CopyStream {
    stream: Stream,
}

impl CopyStream {
    /// A pool stream on `device`. A CPU device gives [`C10Error::NotCuda`]: on the CPU
    /// a plain copy is all there is.
    pub fn new(device: Device) -> Result<CopyStream> {
        Ok(CopyStream {
            stream: Stream::from_pool(device, false)?,
        })
    }

    /// The stream the copies run on.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// The device copies go to.
    pub fn device(&self) -> Device {
        self.stream.device()
    }

    /// Queues a copy of every tensor in `host` to the device on the copy stream
    /// (asynchronous when the source is pinned) and records an event after them. The
    /// host tensors are kept until the copy has completed (see the module header).
    pub fn upload(&self, host: Vec<Tensor>) -> Result<Upload> {
        const OP: &str = "copy tensors to the device on the copy stream";
        let src: Vec<*mut torch_sys::C_tensor> =
            host.iter().map(|t| t.as_ptr() as *mut _).collect();
        let mut dst: Vec<*mut torch_sys::C_tensor> = vec![std::ptr::null_mut(); src.len()];
        // SAFETY: `src` points at live tensors (owned by `host`, alive for the call);
        // `dst` has one slot per source, each filled with a new at::Tensor on success.
        call(OP, |err| unsafe {
            ffi::sv_c10_copy_to_device(
                self.stream.raw.as_ptr(),
                src.as_ptr(),
                src.len() as i64,
                dst.as_mut_ptr(),
                err,
            )
        })?;
        // SAFETY: each pointer is a fresh `new at::Tensor` that tch's drop deletes.
        let device: Vec<Tensor> = dst
            .into_iter()
            .map(|p| unsafe { Tensor::from_ptr(p) })
            .collect();
        let event = self.stream.record()?;
        Ok(Upload {
            device,
            sources: Sources {
                tensors: host,
                event: Some(event),
            },
        })
    }
}

/// Copies queued on a [`CopyStream`], not yet waited for.
#[derive(Debug)]
pub struct Upload {
    device: Vec<Tensor>,
    sources: Sources,
}

impl Upload {
    /// Whether the copies have completed (the host never blocks here).
    pub fn is_complete(&self) -> Result<bool> {
        self.sources.is_complete()
    }

    /// Makes the calling thread's current stream on the device (the compute stream)
    /// wait for the copies, on the device, and returns the device tensors, ready for
    /// work queued on that stream, with the host sources (keep them, or drop them; see
    /// the module header).
    pub fn wait(self) -> Result<(Vec<Tensor>, Sources)> {
        let (Some(first), Some(event)) = (self.device.first(), self.sources.event.as_ref()) else {
            return Ok((self.device, self.sources));
        };
        let current = Stream::current(first.device())?;
        current.wait_event(event)?;
        for t in &self.device {
            current.record_tensor(t)?;
        }
        Ok((self.device, self.sources))
    }
}

/// The host tensors an upload read from. Dropping them blocks until the copy that
/// reads them has completed.
#[derive(Debug)]
pub struct Sources {
    tensors: Vec<Tensor>,
    event: Option<Event>,
}

impl Sources {
    /// Whether the copy out of these tensors has completed.
    pub fn is_complete(&self) -> Result<bool> {
        self.event.as_ref().map_or(Ok(true), Event::query)
    }

    /// Waits for the copy, then frees the tensors; reports a failed wait instead of
    /// ignoring it as a drop must.
    pub fn release(mut self) -> Result<()> {
        if let Some(e) = self.event.take() {
            e.synchronize()?;
        }
        Ok(())
    }

    /// The host tensors.
    pub fn tensors(&self) -> &[Tensor] {
        &self.tensors
    }
}

impl Drop for Sources {
    fn drop(&mut self) {
        if let Some(e) = self.event.take() {
            // The copy must be over before the memory goes; a failed wait means the
            // device is in an error state, where nothing reads it any more.
            let _ = e.synchronize();
        }
    }
}
