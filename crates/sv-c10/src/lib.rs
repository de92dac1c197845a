//! sv-c10: what tch does not expose of libtorch, through a small C++ shim
//! (csrc/shim.cpp, compiled by build.rs against the same libtorch's headers).
//!
//! - [`stream`]: CUDA streams and events, and [`CopyStream`], the side stream the
//!   trainer copies batches on while the compute stream runs the previous step.
//! - [`store`]: c10d's TCPStore, the rendezvous torchrun uses.
//! - [`nccl`]: c10d's ProcessGroupNCCL: all-reduce, broadcast, barrier, abort.
//!
//! C++ exceptions are caught at the boundary and become [`C10Error`]s carrying the
//! exception's kind and message. On a machine without a GPU every CUDA call returns an
//! error (never a crash): libtorch's "no CUDA GPUs" or, for a CPU device,
//! [`C10Error::NotCuda`].
#![warn(missing_docs)]

mod error;
mod ffi;
pub mod nccl;
pub mod store;
pub mod stream;

pub use error::{C10Error, ErrorKind, Result};
pub use nccl::{AbortHandle, ProcessGroupNccl, ReduceOp, nccl_built};
pub use store::{Store, TcpStoreConfig};
pub use stream::{CopyStream, Event, Sources, Stream, StreamGuard, Upload, cuda_device_count};
