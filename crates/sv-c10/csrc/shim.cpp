// The C++ side of sv-c10: a handful of extern "C" functions over libtorch's c10
// streams/events and c10d's TCPStore / ProcessGroupNCCL, which tch does not expose.
//
// Rules every function here follows:
// - No C++ exception crosses the boundary: each body runs inside `guarded`, which
//   returns a status code (SV_OK or an SV_E_* kind) and hands the message back in a
//   malloc'd string the caller frees with sv_c10_free_string.
// - Tensors are tch's: a tch `Tensor` is an `at::Tensor*` (torch-sys's torch_api.h,
//   `typedef torch::Tensor *tensor`). New tensors are returned as `new at::Tensor`,
//   which tch's drop frees (at_free deletes it).
// - Handles (events, stores, process groups) are heap objects owned by the Rust side
//   and freed by the matching *_free function.
// - Streams cross as c10's packed triple (id, device index, device type): pool streams
//   live as long as the process, so there is nothing to free.
//
// Streams and events go through c10's device-generic API (c10::Stream, c10::Event,
// c10::StreamGuard: the CUDA implementation lives in libc10_cuda and is reached through
// the registered DeviceGuardImpl), so they need no CUDA headers. ProcessGroupNCCL does:
// it is compiled only when the build script found them (SV_C10_NCCL).

#include <c10/core/DeviceGuard.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef SV_C10_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {

enum Status : int {
  SV_OK = 0,
  SV_E_TORCH = 1,          // c10::Error (any other kind)
  SV_E_VALUE = 2,          // c10::ValueError / TypeError / IndexError: bad argument
  SV_E_NETWORK = 3,        // c10::DistNetworkError: cannot connect, peer closed
  SV_E_STORE = 4,          // c10::DistStoreError: store timeout, missing key
  SV_E_BACKEND = 5,        // c10::DistBackendError: NCCL failure, collective timeout
  SV_E_STD = 6,            // another std::exception
  SV_E_UNKNOWN = 7,        // something that is not a std::exception
  SV_E_NO_NCCL = 8,        // this build has no ProcessGroupNCCL (no CUDA headers)
  SV_E_OOM = 9,            // c10::OutOfMemoryError
};

char* dup(const char* s) {
  size_t n = std::strlen(s);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, s, n + 1);
  }
  return out;
}

template <typename F>
int guarded(char** err, F&& body) {
  *err = nullptr;
  try {
    body();
    return SV_OK;
  } catch (const c10::OutOfMemoryError& e) {
    *err = dup(e.what_without_backtrace());
    return SV_E_OOM;
  } catch (const c10::DistNetworkError& e) {
    *err = dup(e.what_without_backtrace());
    return SV_E_NETWORK;
  } catch (const c10::DistStoreError& e) {
    *err = dup(e.what_without_backtrace());
    return SV_E_STORE;
  } catch (const c10::DistBackendError& e) {
    *err = dup(e.what_without_backtrace());
    return SV_E_BACKEND;
  } catch (const c10::ValueError& e) {
    *err = dup(e.what_without_backtrace());
    return SV_E_VALUE;
  } catch (const c10::TypeError& e) {
    *err = dup(e.what_without_backtrace());
    return SV_E_VALUE;
  } catch (const c10::IndexError& e) {
    *err = dup(e.what_without_backtrace());
    return SV_E_VALUE;
  } catch (const c10::Error& e) {
    *err = dup(e.what_without_backtrace());
    return SV_E_TORCH;
  } catch (const std::exception& e) {
    *err = dup(e.what());
    return SV_E_STD;
  } catch (...) {
    *err = dup("unknown C++ exception");
    return SV_E_UNKNOWN;
  }
}

c10::Stream unpack(const int64_t* s) {
  return c10::Stream::unpack3(
      static_cast<c10::StreamId>(s[0]),
      static_cast<c10::DeviceIndex>(s[1]),
      static_cast<c10::DeviceType>(s[2]));
}

void pack(const c10::Stream& stream, int64_t* out) {
  auto d = stream.pack3();
  out[0] = d.stream_id;
  out[1] = d.device_index;
  out[2] = static_cast<int64_t>(d.device_type);
}

const c10::impl::DeviceGuardImplInterface* cuda_impl() {
  // Throws a c10::Error when libtorch_cuda is not loaded.
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
}

c10::Device cuda_device(int64_t index) {
  TORCH_CHECK_VALUE(index >= 0 && index < 128, "CUDA device index ", index, " out of range");
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}

using StorePtr = c10::intrusive_ptr<c10d::Store>;

}  // namespace

extern "C" {

typedef at::Tensor* sv_tensor;

void sv_c10_free_string(char* s) { std::free(s); }

// Whether this build includes ProcessGroupNCCL.
int sv_c10_has_nccl() {
#ifdef SV_C10_NCCL
  return 1;
#else
  return 0;
#endif
}

// ---- streams -------------------------------------------------------------------

// Number of CUDA devices the CUDA runtime sees (0 without a driver).
int sv_c10_cuda_device_count(int64_t* out, char** err) {
  return guarded(err, [&] {
    *out = c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA)
               ? static_cast<int64_t>(cuda_impl()->deviceCount())
               : 0;
  });
}

// A stream from the CUDA stream pool of `device` (low priority unless `high`).
int sv_c10_stream_from_pool(int64_t device, int high, int64_t* out, char** err) {
  return guarded(err, [&] {
    pack(cuda_impl()->getStreamFromGlobalPool(cuda_device(device), high != 0), out);
  });
}

// The calling thread's current stream on `device`.
int sv_c10_stream_current(int64_t device, int64_t* out, char** err) {
  return guarded(err, [&] { pack(cuda_impl()->getStream(cuda_device(device)), out); });
}

// Makes `stream` the calling thread's current stream on its device; `prev` gets the
// one it replaces.
int sv_c10_stream_exchange(const int64_t* stream, int64_t* prev, char** err) {
  return guarded(err, [&] { pack(cuda_impl()->exchangeStream(unpack(stream)), prev); });
}

// Blocks the host until all work queued on `stream` has finished.
int sv_c10_stream_synchronize(const int64_t* stream, char** err) {
  return guarded(err, [&] { unpack(stream).synchronize(); });
}

// Whether all work queued on `stream` has finished.
int sv_c10_stream_query(const int64_t* stream, int* done, char** err) {
  return guarded(err, [&] { *done = unpack(stream).query() ? 1 : 0; });
}

// Copies each host tensor `src[i]` to `device` on `stream`, without blocking the host
// when the source is pinned; `dst[i]` receives the device tensor (allocated by the
// caching allocator on `stream`). On failure nothing is returned in `dst`.
int sv_c10_copy_to_device(
    const int64_t* stream,
    const sv_tensor* src,
    int64_t n,
    sv_tensor* dst,
    char** err) {
  std::vector<at::Tensor*> made;
  int rc = guarded(err, [&] {
    auto s = unpack(stream);
    TORCH_CHECK_VALUE(s.device_type() == c10::DeviceType::CUDA, "the copy stream is not a CUDA stream");
    c10::StreamGuard guard(s);
    for (int64_t i = 0; i < n; ++i) {
      made.push_back(new at::Tensor(src[i]->to(s.device(), /*non_blocking=*/true, /*copy=*/false)));
    }
  });
  if (rc != SV_OK) {
    for (auto* t : made) delete t;
    return rc;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = made[i];
  return SV_OK;
}

// Tells the caching allocator that `t`'s memory is in use on `stream` (so the block
// is not handed out again before the work queued there so far has finished).
int sv_c10_record_stream(sv_tensor t, const int64_t* stream, char** err) {
  return guarded(err, [&] { t->record_stream(unpack(stream)); });
}

// ---- events --------------------------------------------------------------------

int sv_c10_event_new(c10::Event** out, char** err) {
  return guarded(err, [&] { *out = new c10::Event(c10::DeviceType::CUDA); });
}

void sv_c10_event_free(c10::Event* e) { delete e; }

int sv_c10_event_record(c10::Event* e, const int64_t* stream, char** err) {
  return guarded(err, [&] { e->record(unpack(stream)); });
}

// Makes `stream` wait (on the device, not the host) until `e` has completed.
int sv_c10_event_block(c10::Event* e, const int64_t* stream, char** err) {
  return guarded(err, [&] { e->block(unpack(stream)); });
}

int sv_c10_event_query(c10::Event* e, int* done, char** err) {
  return guarded(err, [&] { *done = e->query() ? 1 : 0; });
}

int sv_c10_event_synchronize(c10::Event* e, char** err) {
  return guarded(err, [&] { e->synchronize(); });
}

// ---- TCPStore ------------------------------------------------------------------

// A TCPStore client, or the server too when `is_server` (port 0 picks a free port:
// read it back with sv_c10_store_port). `world_size` < 0 leaves the number of
// workers open.
int sv_c10_tcp_store_new(
    const char* host,
    int64_t port,
    int is_server,
    int64_t world_size,
    int64_t timeout_ms,
    StorePtr** out,
    char** err) {
  return guarded(err, [&] {
    TORCH_CHECK_VALUE(port >= 0 && port <= 65535, "port ", port, " out of range");
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    if (world_size >= 0) {
      opts.numWorkers = static_cast<std::size_t>(world_size);
    }
    // Workers are counted by the callers' own rendezvous, not at construction.
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    opts.multiTenant = true;
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new StorePtr(std::move(store));
  });
}

// The port a TCPStore listens on or connects to.
int sv_c10_store_port(StorePtr* store, int64_t* out, char** err) {
  return guarded(err, [&] {
    auto* tcp = dynamic_cast<c10d::TCPStore*>(store->get());
    if (tcp == nullptr) {
      auto* prefixed = dynamic_cast<c10d::PrefixStore*>(store->get());
      TORCH_CHECK_VALUE(prefixed != nullptr, "not a TCPStore");
      tcp = dynamic_cast<c10d::TCPStore*>(prefixed->getUnderlyingNonPrefixStore().get());
      TORCH_CHECK_VALUE(tcp != nullptr, "not a TCPStore");
    }
    *out = tcp->getPort();
  });
}

// A view of `store` whose keys all start with `prefix/`.
int sv_c10_store_prefixed(StorePtr* store, const char* prefix, StorePtr** out, char** err) {
  return guarded(err, [&] {
    *out = new StorePtr(c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), *store));
  });
}

// A second connection to the same store (for another thread).
int sv_c10_store_clone(StorePtr* store, StorePtr** out, char** err) {
  return guarded(err, [&] { *out = new StorePtr((*store)->clone()); });
}

void sv_c10_store_free(StorePtr* store) { delete store; }

int sv_c10_store_set(StorePtr* store, const char* key, const uint8_t* data, int64_t len, char** err) {
  return guarded(err, [&] {
    std::vector<uint8_t> v(data, data + len);
    (*store)->set(std::string(key), v);
  });
}

// Waits (up to the store's timeout) for `key`, then returns its value in a malloc'd
// buffer the caller frees with sv_c10_free_string.
int sv_c10_store_get(StorePtr* store, const char* key, uint8_t** data, int64_t* len, char** err) {
  *data = nullptr;
  return guarded(err, [&] {
    auto v = (*store)->get(std::string(key));
    auto* buf = static_cast<uint8_t*>(std::malloc(v.empty() ? 1 : v.size()));
    TORCH_CHECK(buf != nullptr, "out of memory for a store value of ", v.size(), " bytes");
    if (!v.empty()) std::memcpy(buf, v.data(), v.size());
    *data = buf;
    *len = static_cast<int64_t>(v.size());
  });
}

int sv_c10_store_add(StorePtr* store, const char* key, int64_t delta, int64_t* out, char** err) {
  return guarded(err, [&] { *out = (*store)->add(std::string(key), delta); });
}

int sv_c10_store_check(StorePtr* store, const char* key, int* out, char** err) {
  return guarded(err, [&] { *out = (*store)->check({std::string(key)}) ? 1 : 0; });
}

int sv_c10_store_set_timeout(StorePtr* store, int64_t timeout_ms, char** err) {
  return guarded(err, [&] { (*store)->setTimeout(std::chrono::milliseconds(timeout_ms)); });
}

// ---- ProcessGroupNCCL ----------------------------------------------------------

#ifdef SV_C10_NCCL
typedef c10::intrusive_ptr<c10d::ProcessGroupNCCL> PgPtr;
#else
typedef void PgPtr;
#endif

// An NCCL process group of `size` ranks over `store`, this process being `rank` and
// using CUDA device `device`; collectives that do not finish within `timeout_ms` are
// failed by ProcessGroupNCCL's watchdog. The communicator is created now (eagerly),
// so a rendezvous failure is reported here rather than at the first all-reduce.
int sv_c10_pg_nccl_new(
    StorePtr* store,
    int64_t rank,
    int64_t size,
    int64_t device,
    int64_t timeout_ms,
    PgPtr** out,
    char** err) {
#ifdef SV_C10_NCCL
  return guarded(err, [&] {
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(
        *store, static_cast<int>(rank), static_cast<int>(size), opts);
    auto dev = cuda_device(device);
    pg->setBoundDeviceId(dev);
    pg->eagerConnectSingleDevice(dev);
    *out = new PgPtr(std::move(pg));
  });
#else
  (void)store; (void)rank; (void)size; (void)device; (void)timeout_ms; (void)out;
  *err = dup("this build has no ProcessGroupNCCL: the CUDA headers were missing when sv-c10 was compiled");
  return SV_E_NO_NCCL;
#endif
}

// Another owner of the same process group (for a watchdog thread that may abort it).
PgPtr* sv_c10_pg_clone(PgPtr* pg) {
#ifdef SV_C10_NCCL
  return new (std::nothrow) PgPtr(*pg);
#else
  return pg;
#endif
}

void sv_c10_pg_free(PgPtr* pg) {
#ifdef SV_C10_NCCL
  delete pg;
#else
  (void)pg;
#endif
}

// op: 0 sum, 1 average. One collective per tensor, all started before any is waited
// on; waiting makes the current stream wait for NCCL's (the host is not blocked).
int sv_c10_pg_allreduce(PgPtr* pg, const sv_tensor* ts, int64_t n, int op, char** err) {
#ifdef SV_C10_NCCL
  return guarded(err, [&] {
    c10d::AllreduceOptions o;
    o.reduceOp = op == 1 ? c10d::ReduceOp(c10d::ReduceOp::AVG) : c10d::ReduceOp(c10d::ReduceOp::SUM);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(n);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back((*pg)->allreduce(one, o));
    }
    for (auto& w : works) w->wait();
  });
#else
  (void)pg; (void)ts; (void)n; (void)op;
  *err = dup("this build has no ProcessGroupNCCL");
  return SV_E_NO_NCCL;
#endif
}

int sv_c10_pg_broadcast(PgPtr* pg, const sv_tensor* ts, int64_t n, int64_t root, char** err) {
#ifdef SV_C10_NCCL
  return guarded(err, [&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (int64_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back((*pg)->broadcast(one, o));
    }
    for (auto& w : works) w->wait();
  });
#else
  (void)pg; (void)ts; (void)n; (void)root;
  *err = dup("this build has no ProcessGroupNCCL");
  return SV_E_NO_NCCL;
#endif
}

// Blocks the host until every rank has reached the barrier.
int sv_c10_pg_barrier(PgPtr* pg, char** err) {
#ifdef SV_C10_NCCL
  return guarded(err, [&] { (*pg)->barrier(c10d::BarrierOptions())->wait(); });
#else
  (void)pg;
  *err = dup("this build has no ProcessGroupNCCL");
  return SV_E_NO_NCCL;
#endif
}

// Aborts the communicators: pending and future collectives fail instead of waiting
// for a peer that is gone. Safe to call from another thread.
int sv_c10_pg_abort(PgPtr* pg, char** err) {
#ifdef SV_C10_NCCL
  return guarded(err, [&] { (*pg)->abort(); });
#else
  (void)pg;
  *err = dup("this build has no ProcessGroupNCCL");
  return SV_E_NO_NCCL;
#endif
}

// Orderly destruction of the communicators (normal exit).
int sv_c10_pg_shutdown(PgPtr* pg, char** err) {
#ifdef SV_C10_NCCL
  return guarded(err, [&] { (*pg)->shutdown(); });
#else
  (void)pg;
  *err = dup("this build has no ProcessGroupNCCL");
  return SV_E_NO_NCCL;
#endif
}

}  // extern "C"
