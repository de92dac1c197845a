//! c10d's ProcessGroupNCCL: the NCCL communicator PyTorch DDP uses, created over a
//! [`Store`] rendezvous. Collectives are queued on NCCL's own stream; waiting for one
//! makes the calling thread's current stream wait for it on the device, so the host is
//! not blocked and later kernels see the result (the stream ordering DDP relies on).

use std::ffi::c_void;
use std::ptr::NonNull;
use std::time::Duration;

use tch::{Device, Tensor};

use crate::error::{C10Error, ErrorKind, Result, call};
use crate::ffi;
use crate::store::Store;

/// How an all-reduce combines the ranks' values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum.
    Sum,
    /// Element-wise mean over the ranks (NCCL's ncclAvg).
    Avg,
}

/// Whether this build of the shim includes ProcessGroupNCCL.
pub fn nccl_built() -> bool {
    // SAFETY: no arguments.
    unsafe { ffi::sv_c10_has_nccl() != 0 }
}

/// An NCCL process group (`intrusive_ptr<c10d::ProcessGroupNCCL>`).
pub struct ProcessGroupNccl {
    ptr: NonNull<c_void>,
    rank: usize,
    size: usize,
    device: Device,
    closed: bool,
}

impl std::fmt::Debug for ProcessGroupNccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroupNccl")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("device", &self.device)
            .finish()
    }
}

// SAFETY: the process group is internally synchronised (its watchdog thread shares
// it); this handle is used by one thread at a time (no Sync).
unsafe impl Send for ProcessGroupNccl {}

fn raw_tensors(tensors: &mut [Tensor]) -> Vec<*mut torch_sys::C_tensor> {
    tensors.iter_mut().map(|t| t.as_mut_ptr()).collect()
}

impl ProcessGroupNccl {
    /// Joins the group of `size` ranks as `rank` on CUDA device `device`, through
    /// `store` (every rank must use the same store and prefix). The communicator is
    /// created now. Collectives that do not complete within `timeout` are failed by
    /// ProcessGroupNCCL's watchdog.
    pub fn new(
        store: &Store,
        rank: usize,
        size: usize,
        device: Device,
        timeout: Duration,
    ) -> Result<ProcessGroupNccl> {
        const OP: &str = "create the NCCL process group";
        let Device::Cuda(index) = device else {
            return Err(C10Error::NotCuda {
                op: OP,
                device: format!("{device:?}").to_lowercase(),
            });
        };
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: live store, out-parameter.
        call(OP, |err| unsafe {
            ffi::sv_c10_pg_nccl_new(
                store.as_raw(),
                rank as i64,
                size as i64,
                index as i64,
                timeout.as_millis().min(i64::MAX as u128) as i64,
                &mut p,
                err,
            )
        })?;
        let ptr = NonNull::new(p).ok_or(C10Error::Torch {
            op: OP,
            kind: ErrorKind::Other,
            message: "null process group".into(),
        })?;
        Ok(ProcessGroupNccl {
            ptr,
            rank,
            size,
            device,
            closed: false,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The CUDA device this rank uses.
    pub fn device(&self) -> Device {
        self.device
    }

    /// All-reduces each tensor in place (one NCCL call per tensor, all queued before
    /// any is waited for). Tensors must be contiguous and on this rank's device.
    pub fn all_reduce(&self, tensors: &mut [Tensor], op: ReduceOp) -> Result<()> {
        let raw = raw_tensors(tensors);
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
        };
        // SAFETY: live group; tensor pointers valid for the call.
        call("NCCL all-reduce", |err| unsafe {
            ffi::sv_c10_pg_allreduce(self.ptr.as_ptr(), raw.as_ptr(), raw.len() as i64, code, err)
        })
    }

    /// Replaces each tensor by rank `root`'s, in place.
    pub fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<()> {
        let raw = raw_tensors(tensors);
        // SAFETY: live group; tensor pointers valid for the call.
        call("NCCL broadcast", |err| unsafe {
            ffi::sv_c10_pg_broadcast(
                self.ptr.as_ptr(),
                raw.as_ptr(),
                raw.len() as i64,
                root as i64,
                err,
            )
        })
    }

    /// Returns when every rank has called it (blocks the host).
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: live group.
        call("NCCL barrier", |err| unsafe {
            ffi::sv_c10_pg_barrier(self.ptr.as_ptr(), err)
        })
    }

    /// A handle another thread can use to abort the group.
    pub fn abort_handle(&self) -> AbortHandle {
        // SAFETY: live group; the clone is a second owner.
        let p = unsafe { ffi::sv_c10_pg_clone(self.ptr.as_ptr()) };
        AbortHandle {
            ptr: NonNull::new(p),
        }
    }

    /// Orderly end: waits for queued collectives and destroys the communicators.
    pub fn shutdown(mut self) -> Result<()> {
        self.closed = true;
        // SAFETY: live group.
        call("shut the NCCL process group down", |err| unsafe {
            ffi::sv_c10_pg_shutdown(self.ptr.as_ptr(), err)
        })
    }
}

impl Drop for ProcessGroupNccl {
    fn drop(&mut self) {
        if !self.closed {
            // Dropped without `shutdown` (an error path): abort rather than wait for
            // peers that may be gone.
            // SAFETY: live group.
            let _ = call("abort the NCCL process group", |err| unsafe {
                ffi::sv_c10_pg_abort(self.ptr.as_ptr(), err)
            });
        }
        // SAFETY: created by the shim, freed once.
        unsafe { ffi::sv_c10_pg_free(self.ptr.as_ptr()) }
    }
}

/// Aborts a process group from another thread (a watchdog that found a dead peer):
/// pending and later collectives fail instead of waiting.
pub struct AbortHandle {
    /// None when the clone could not be allocated: aborting is then a no-op.
    ptr: Option<NonNull<c_void>>,
}

impl std::fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbortHandle").finish_non_exhaustive()
    }
}

// SAFETY: ProcessGroupNCCL::abort is meant to be called from other threads (its own
// watchdog does); the handle owns a reference.
unsafe impl Send for AbortHandle {}
// SAFETY: as above; abort is idempotent.
unsafe impl Sync for AbortHandle {}

impl AbortHandle {
    /// Aborts the communicators.
    pub fn abort(&self) -> Result<()> {
        let Some(ptr) = self.ptr else { return Ok(()) };
        // SAFETY: the handle holds a reference to a live group.
        call("abort the NCCL process group", |err| unsafe {
            ffi::sv_c10_pg_abort(ptr.as_ptr(), err)
        })
    }
}

impl Drop for AbortHandle {
    fn drop(&mut self) {
        if let Some(ptr) = self.ptr {
            // SAFETY: a clone made by sv_c10_pg_clone, freed once.
            unsafe { ffi::sv_c10_pg_free(ptr.as_ptr()) }
        }
    }
}
