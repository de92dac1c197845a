//! The shim's C functions (csrc/shim.cpp). Every function returning `c_int` returns 0
//! on success or an error kind, with a malloc'd message in `err` that
//! [`crate::error::check`] turns into a [`crate::C10Error`] and frees.

use std::ffi::{c_char, c_int, c_void};

use torch_sys::C_tensor;

/// A packed c10::Stream: (stream id, device index, device type).
pub(crate) type RawStream = [i64; 3];

unsafe extern "C" {
    pub(crate) fn sv_c10_free_string(s: *mut c_char);
    pub(crate) fn sv_c10_has_nccl() -> c_int;

    pub(crate) fn sv_c10_cuda_device_count(out: *mut i64, err: *mut *mut c_char) -> c_int;
    pub(crate) fn sv_c10_stream_from_pool(
        device: i64,
        high: c_int,
        out: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_stream_current(device: i64, out: *mut i64, err: *mut *mut c_char)
    -> c_int;
    pub(crate) fn sv_c10_stream_exchange(
        stream: *const i64,
        prev: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_stream_synchronize(stream: *const i64, err: *mut *mut c_char) -> c_int;
    pub(crate) fn sv_c10_stream_query(
        stream: *const i64,
        done: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_copy_to_device(
        stream: *const i64,
        src: *const *mut C_tensor,
        n: i64,
        dst: *mut *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_record_stream(
        t: *mut C_tensor,
        stream: *const i64,
        err: *mut *mut c_char,
    ) -> c_int;

    pub(crate) fn sv_c10_event_new(out: *mut *mut c_void, err: *mut *mut c_char) -> c_int;
    pub(crate) fn sv_c10_event_free(e: *mut c_void);
    pub(crate) fn sv_c10_event_record(
        e: *mut c_void,
        stream: *const i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_event_block(
        e: *mut c_void,
        stream: *const i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_event_query(
        e: *mut c_void,
        done: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_event_synchronize(e: *mut c_void, err: *mut *mut c_char) -> c_int;

    pub(crate) fn sv_c10_tcp_store_new(
        host: *const c_char,
        port: i64,
        is_server: c_int,
        world_size: i64,
        timeout_ms: i64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_store_port(s: *mut c_void, out: *mut i64, err: *mut *mut c_char) -> c_int;
    pub(crate) fn sv_c10_store_prefixed(
        s: *mut c_void,
        prefix: *const c_char,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_store_clone(
        s: *mut c_void,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_store_free(s: *mut c_void);
    pub(crate) fn sv_c10_store_set(
        s: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_store_get(
        s: *mut c_void,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_store_add(
        s: *mut c_void,
        key: *const c_char,
        delta: i64,
        out: *mut i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_store_check(
        s: *mut c_void,
        key: *const c_char,
        out: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_store_set_timeout(
        s: *mut c_void,
        timeout_ms: i64,
        err: *mut *mut c_char,
    ) -> c_int;

    pub(crate) fn sv_c10_pg_nccl_new(
        store: *mut c_void,
        rank: i64,
        size: i64,
        device: i64,
        timeout_ms: i64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_pg_clone(pg: *mut c_void) -> *mut c_void;
    pub(crate) fn sv_c10_pg_free(pg: *mut c_void);
    pub(crate) fn sv_c10_pg_allreduce(
        pg: *mut c_void,
        ts: *const *mut C_tensor,
        n: i64,
        op: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_pg_broadcast(
        pg: *mut c_void,
        ts: *const *mut C_tensor,
        n: i64,
        root: i64,
        err: *mut *mut c_char,
    ) -> c_int;
    pub(crate) fn sv_c10_pg_barrier(pg: *mut c_void, err: *mut *mut c_char) -> c_int;
    pub(crate) fn sv_c10_pg_abort(pg: *mut c_void, err: *mut *mut c_char) -> c_int;
    pub(crate) fn sv_c10_pg_shutdown(pg: *mut c_void, err: *mut *mut c_char) -> c_int;
}
