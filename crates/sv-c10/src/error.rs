//! The crate's error type: what was being done, and libtorch's message.

use std::ffi::{CStr, c_char, c_int};

use crate::ffi;

/// What kind of failure libtorch reported (the C++ exception's type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Any other `c10::Error` (for instance "no CUDA GPUs are available").
    Torch,
    /// A bad argument (`c10::ValueError`, `TypeError`, `IndexError`).
    InvalidArgument,
    /// A connection failed or a peer closed it (`c10::DistNetworkError`).
    Network,
    /// A store operation failed or timed out (`c10::DistStoreError`).
    Store,
    /// The communication backend failed (`c10::DistBackendError`: NCCL errors,
    /// collectives that timed out).
    Backend,
    /// Device or host memory ran out.
    OutOfMemory,
    /// A C++ exception of another type.
    Other,
}

/// Everything this crate can report.
#[derive(Debug, thiserror::Error)]
pub enum C10Error {
    /// libtorch threw while doing `op`.
    #[error("{op}: {message}")]
    Torch {
        /// What was being done.
        op: &'static str,
        /// The exception's type.
        kind: ErrorKind,
        /// The exception's message, without the C++ backtrace.
        message: String,
    },
    /// Streams and events exist only on CUDA devices.
    #[error("{op}: {device} is not a CUDA device (streams and events are CUDA-only)")]
    NotCuda {
        /// What was being done.
        op: &'static str,
        /// The device given.
        device: String,
    },
    /// This build of the shim has no ProcessGroupNCCL.
    #[error(
        "{op}: this build has no NCCL support (the CUDA and NCCL headers were missing when \
         sv-c10 was compiled; tools/setup-torch.sh installs them)"
    )]
    NoNccl {
        /// What was being done.
        op: &'static str,
    },
    /// A string for C++ held a NUL byte.
    #[error("{op}: `{value}` contains a NUL byte")]
    Nul {
        /// What was being done.
        op: &'static str,
        /// The string.
        value: String,
    },
}

impl C10Error {
    /// The exception's kind, when libtorch threw.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            C10Error::Torch { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = C10Error> = std::result::Result<T, E>;

const NO_NCCL: c_int = 8;

/// Turns a shim status and its message into a result, freeing the message.
pub(crate) fn check(op: &'static str, rc: c_int, err: *mut c_char) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let message = if err.is_null() {
        "libtorch reported an error without a message".to_string()
    } else {
        // SAFETY: the shim hands out a NUL-terminated malloc'd string or null.
        let s = unsafe { CStr::from_ptr(err) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: allocated by the shim's malloc, freed once here.
        unsafe { ffi::sv_c10_free_string(err) };
        s
    };
    let kind = match rc {
        NO_NCCL => return Err(C10Error::NoNccl { op }),
        1 => ErrorKind::Torch,
        2 => ErrorKind::InvalidArgument,
        3 => ErrorKind::Network,
        4 => ErrorKind::Store,
        5 => ErrorKind::Backend,
        9 => ErrorKind::OutOfMemory,
        _ => ErrorKind::Other,
    };
    Err(C10Error::Torch {
        op,
        kind,
        message: message.trim().to_string(),
    })
}

/// Calls a shim function that reports through `(status, err)`.
pub(crate) fn call(op: &'static str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
    let mut err: *mut c_char = std::ptr::null_mut();
    let rc = f(&mut err);
    check(op, rc, err)
}

/// A C string for the shim.
pub(crate) fn cstring(op: &'static str, s: &str) -> Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| C10Error::Nul {
        op,
        value: s.to_string(),
    })
}
