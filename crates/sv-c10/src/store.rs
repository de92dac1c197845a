//! c10d's TCPStore: the key-value rendezvous torchrun and `init_process_group` use.
//! One process (or torchrun's agent) runs the server; every rank connects as a client.
//! NCCL exchanges its unique id through it, and the distributed trainer keeps its
//! heartbeats and failure notes there.

use std::ffi::{c_int, c_void};
use std::ptr::NonNull;
use std::time::Duration;

use crate::error::{C10Error, ErrorKind, Result, call, cstring};
use crate::ffi;

/// How to reach (or host) a TCPStore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpStoreConfig {
    /// Host name or address of the server.
    pub host: String,
    /// Its port; 0 with `is_server` picks a free one ([`Store::port`] tells which).
    pub port: u16,
    /// Whether this process runs the server.
    pub is_server: bool,
    /// Number of workers, when known (informational for the server).
    pub world_size: Option<usize>,
    /// How long connecting and each blocking `get` may take.
    pub timeout: Duration,
}

/// A connection to a c10d store (an `intrusive_ptr<c10d::Store>`).
pub struct Store {
    ptr: NonNull<c_void>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

// SAFETY: c10d stores lock internally and their reference count is atomic; a Store is
// used by one thread at a time (no Sync). Use `try_clone` for a second thread.
unsafe impl Send for Store {}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Store {
    fn wrap(op: &'static str, p: *mut c_void) -> Result<Store> {
        NonNull::new(p)
            .map(|ptr| Store { ptr })
            .ok_or(C10Error::Torch {
                op,
                kind: ErrorKind::Other,
                message: "null store".into(),
            })
    }

    /// Connects to (and, with `is_server`, first starts) a TCPStore.
    pub fn tcp(config: &TcpStoreConfig) -> Result<Store> {
        const OP: &str = "open the TCPStore";
        let host = cstring(OP, &config.host)?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid C string and out-parameter.
        call(OP, |err| unsafe {
            ffi::sv_c10_tcp_store_new(
                host.as_ptr(),
                i64::from(config.port),
                c_int::from(config.is_server),
                config.world_size.map_or(-1, |w| w as i64),
                millis(config.timeout),
                &mut p,
                err,
            )
        })?;
        Store::wrap(OP, p)
    }

    /// The TCP port of the server this store talks to (the chosen one after port 0).
    pub fn port(&self) -> Result<u16> {
        let mut port = 0i64;
        // SAFETY: live store, out-parameter.
        call("read the TCPStore's port", |err| unsafe {
            ffi::sv_c10_store_port(self.ptr.as_ptr(), &mut port, err)
        })?;
        Ok(port as u16)
    }

    /// A view whose keys are all under `prefix/` (c10d's PrefixStore).
    pub fn prefixed(&self, prefix: &str) -> Result<Store> {
        const OP: &str = "make a prefixed store";
        let c = cstring(OP, prefix)?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: live store, C string, out-parameter.
        call(OP, |err| unsafe {
            ffi::sv_c10_store_prefixed(self.ptr.as_ptr(), c.as_ptr(), &mut p, err)
        })?;
        Store::wrap(OP, p)
    }

    /// A second connection to the same server, for another thread.
    pub fn try_clone(&self) -> Result<Store> {
        const OP: &str = "open a second store connection";
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: live store, out-parameter.
        call(OP, |err| unsafe {
            ffi::sv_c10_store_clone(self.ptr.as_ptr(), &mut p, err)
        })?;
        Store::wrap(OP, p)
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        const OP: &str = "store set";
        let k = cstring(OP, key)?;
        // SAFETY: live store, C string, slice valid for the call.
        call(OP, |err| unsafe {
            ffi::sv_c10_store_set(
                self.ptr.as_ptr(),
                k.as_ptr(),
                value.as_ptr(),
                value.len() as i64,
                err,
            )
        })
    }

    /// The value of `key`, waiting for it up to the store's timeout.
    pub fn get(&self, key: &str) -> Result<Vec<u8>> {
        const OP: &str = "store get";
        let k = cstring(OP, key)?;
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len = 0i64;
        // SAFETY: live store, C string, out-parameters.
        call(OP, |err| unsafe {
            ffi::sv_c10_store_get(self.ptr.as_ptr(), k.as_ptr(), &mut data, &mut len, err)
        })?;
        if data.is_null() {
            return Ok(Vec::new());
        }
        // SAFETY: the shim malloc'd `len` bytes at `data`; copied, then freed once.
        let v = unsafe { std::slice::from_raw_parts(data, len.max(0) as usize) }.to_vec();
        // SAFETY: as above.
        unsafe { ffi::sv_c10_free_string(data.cast()) };
        Ok(v)
    }

    /// Adds `delta` to the integer at `key` (created as 0) and returns the new value;
    /// `add(key, 0)` reads it without waiting.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        const OP: &str = "store add";
        let k = cstring(OP, key)?;
        let mut out = 0i64;
        // SAFETY: live store, C string, out-parameter.
        call(OP, |err| unsafe {
            ffi::sv_c10_store_add(self.ptr.as_ptr(), k.as_ptr(), delta, &mut out, err)
        })?;
        Ok(out)
    }

    /// Whether `key` exists (does not wait).
    pub fn check(&self, key: &str) -> Result<bool> {
        const OP: &str = "store check";
        let k = cstring(OP, key)?;
        let mut out = 0;
        // SAFETY: live store, C string, out-parameter.
        call(OP, |err| unsafe {
            ffi::sv_c10_store_check(self.ptr.as_ptr(), k.as_ptr(), &mut out, err)
        })?;
        Ok(out != 0)
    }

    /// Sets how long blocking operations wait.
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        // SAFETY: live store.
        call("set the store's timeout", |err| unsafe {
            ffi::sv_c10_store_set_timeout(self.ptr.as_ptr(), millis(timeout), err)
        })
    }

    pub(crate) fn as_raw(&self) -> *mut c_void {
        self.ptr.as_ptr()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by the shim, freed once.
        unsafe { ffi::sv_c10_store_free(self.ptr.as_ptr()) }
    }
}
