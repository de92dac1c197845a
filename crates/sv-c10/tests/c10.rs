//! What can be checked without a GPU: CUDA calls fail cleanly (typed errors, readable
//! messages, no crash), the TCPStore works within one process and between two, and
//! ProcessGroupNCCL refuses a GPU-less machine with an error. With a GPU, the copy
//! stream's round trip and its ordering against the compute stream.

use std::process::Command;
use std::time::{Duration, Instant};

use sv_c10::{
    C10Error, CopyStream, ErrorKind, ProcessGroupNccl, ReduceOp, Store, Stream, TcpStoreConfig,
    cuda_device_count, nccl_built,
};
use tch::{Device, Kind, Tensor};

fn gpu() -> bool {
    tch::Cuda::is_available()
}

fn server(timeout: Duration) -> Store {
    Store::tcp(&TcpStoreConfig {
        host: "127.0.0.1".into(),
        port: 0,
        is_server: true,
        world_size: None,
        timeout,
    })
    .expect("start a TCPStore server on a free port")
}

fn client(port: u16, timeout: Duration) -> sv_c10::Result<Store> {
    Store::tcp(&TcpStoreConfig {
        host: "127.0.0.1".into(),
        port,
        is_server: false,
        world_size: None,
        timeout,
    })
}

#[test]
fn cpu_devices_are_refused_by_name() {
    let e = CopyStream::new(Device::Cpu).unwrap_err();
    assert!(matches!(e, C10Error::NotCuda { .. }), "{e:?}");
    assert!(e.to_string().contains("cpu is not a CUDA device"), "{e}");
    assert!(matches!(
        Stream::current(Device::Cpu),
        Err(C10Error::NotCuda { .. })
    ));
}

#[test]
fn without_a_gpu_cuda_calls_are_errors_not_crashes() {
    if gpu() {
        return;
    }
    assert_eq!(cuda_device_count().unwrap(), 0);
    for r in [
        Stream::from_pool(Device::Cuda(0), false).map(|_| ()),
        Stream::current(Device::Cuda(0)).map(|_| ()),
        CopyStream::new(Device::Cuda(0)).map(|_| ()),
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, C10Error::Torch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            !msg.contains("frame #"),
            "no C++ backtrace in messages: {msg}"
        );
    }
}

#[test]
fn nccl_group_on_a_machine_without_gpus_is_a_clean_error() {
    if gpu() {
        return;
    }
    let store = server(Duration::from_secs(5));
    let e =
        ProcessGroupNccl::new(&store, 0, 1, Device::Cuda(0), Duration::from_secs(5)).unwrap_err();
    if nccl_built() {
        assert_eq!(e.kind(), Some(ErrorKind::InvalidArgument), "{e:?}");
        assert!(e.to_string().contains("no GPUs found"), "{e}");
    } else {
        assert!(matches!(e, C10Error::NoNccl { .. }), "{e:?}");
    }
    let e = ProcessGroupNccl::new(&store, 0, 1, Device::Cpu, Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, C10Error::NotCuda { .. }), "{e:?}");
}

#[test]
fn tcp_store_in_one_process() {
    let s = server(Duration::from_secs(5));
    let port = s.port().unwrap();
    assert_ne!(port, 0, "port 0 is replaced by the one bound");
    let c = client(port, Duration::from_secs(5)).unwrap();
    s.set("greeting", b"hello").unwrap();
    assert_eq!(c.get("greeting").unwrap(), b"hello");
    assert_eq!(c.add("n", 2).unwrap(), 2);
    assert_eq!(s.add("n", 3).unwrap(), 5);
    assert_eq!(c.add("n", 0).unwrap(), 5);
    assert!(c.check("n").unwrap());
    assert!(!c.check("absent").unwrap());
    // Prefixes keep key spaces apart.
    let p = c.prefixed("job7").unwrap();
    p.set("greeting", b"other").unwrap();
    assert_eq!(c.get("greeting").unwrap(), b"hello");
    assert_eq!(s.get("job7/greeting").unwrap(), b"other");
    assert_eq!(p.port().unwrap(), port);
    // A second connection works from another thread.
    let clone = c.try_clone().unwrap();
    std::thread::spawn(move || clone.set("from-thread", b"x").unwrap())
        .join()
        .unwrap();
    assert_eq!(s.get("from-thread").unwrap(), b"x");
    // Waiting for a key nobody sets ends with a store error after the timeout.
    c.set_timeout(Duration::from_millis(300)).unwrap();
    let t = Instant::now();
    let e = c.get("never").unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(
        matches!(e.kind(), Some(ErrorKind::Store | ErrorKind::Network)),
        "{e:?}"
    );
    assert!(matches!(s.get("a\0b"), Err(C10Error::Nul { .. })));
}

#[test]
fn tcp_store_connect_to_nothing_fails_in_time() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let e = client(port, Duration::from_millis(1500)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        matches!(e.kind(), Some(ErrorKind::Network | ErrorKind::Store)),
        "{e:?}"
    );
}

const CHILD_PORT: &str = "SV_C10_TEST_CHILD_PORT";

/// The child half of `tcp_store_between_two_processes` (does nothing on its own).
#[test]
fn store_child() {
    let Ok(port) = std::env::var(CHILD_PORT) else {
        return;
    };
    let c = client(port.parse().unwrap(), Duration::from_secs(20)).unwrap();
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let mine: Vec<f32> = Vec::try_from(&x).unwrap();
    let bytes: Vec<u8> = mine.iter().flat_map(|v| v.to_le_bytes()).collect();
    c.set("child/tensor", &bytes).unwrap();
    // Wait for the parent's reply, then leave the mean where the parent reads it.
    let theirs = c.get("parent/tensor").unwrap();
    let theirs: Vec<f32> = theirs
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let mean: Vec<u8> = mine
        .iter()
        .zip(&theirs)
        .flat_map(|(a, b)| ((a + b) / 2.0).to_le_bytes())
        .collect();
    c.set("child/mean", &mean).unwrap();
}

#[test]
fn tcp_store_between_two_processes() {
    let s = server(Duration::from_secs(20));
    let port = s.port().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store_child", "--test-threads", "1"])
        .env(CHILD_PORT, port.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let theirs = s.get("child/tensor").unwrap();
    assert_eq!(theirs.len(), 12);
    let mine: Vec<u8> = [3.0f32, 2.0, 1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    s.set("parent/tensor", &mine).unwrap();
    let mean: Vec<f32> = s
        .get("child/mean")
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(mean, [2.0, 2.0, 2.0]);
    assert!(child.wait().unwrap().success());
}

#[test]
fn copy_stream_round_trip_on_a_gpu() {
    if !gpu() {
        return;
    }
    let device = Device::Cuda(0);
    let cs = CopyStream::new(device).unwrap();
    assert_ne!(
        cs.stream(),
        Stream::current(device).unwrap(),
        "a side stream"
    );
    let host = Tensor::arange(1 << 20, (Kind::Float, Device::Cpu)).pin_memory(device);
    let labels = Tensor::arange(64, (Kind::Int64, Device::Cpu)).pin_memory(device);
    let up = cs
        .upload(vec![host.shallow_clone(), labels.shallow_clone()])
        .unwrap();
    let (dev, sources) = up.wait().unwrap();
    // Queued on the compute stream after the wait: sees the copied values.
    let sum = dev[0].sum(Kind::Double).double_value(&[]);
    let n = (1u64 << 20) as f64;
    assert_eq!(sum, n * (n - 1.0) / 2.0);
    assert_eq!(dev[1].device(), device);
    assert!(dev[1].equal(&labels.to_device(device)));
    sources.release().unwrap();
    // Many uploads in flight on reused memory stay correct.
    for i in 0..20i64 {
        let h = Tensor::full([256, 256], i as f64, (Kind::Float, Device::Cpu)).pin_memory(device);
        let (d, _keep) = cs.upload(vec![h]).unwrap().wait().unwrap();
        let mut out = d[0].shallow_clone();
        let _ = out.f_mul_scalar_(2.0).unwrap();
        assert_eq!(out.max().double_value(&[]), 2.0 * i as f64);
    }
    let ev = cs.stream().record().unwrap();
    ev.synchronize().unwrap();
    assert!(ev.query().unwrap());
    assert!(cs.stream().query().unwrap());
}

#[test]
fn nccl_world_of_one_on_a_gpu() {
    if !gpu() || !nccl_built() {
        return;
    }
    let device = Device::Cuda(0);
    let store = server(Duration::from_secs(30));
    let pg = ProcessGroupNccl::new(&store, 0, 1, device, Duration::from_secs(60)).unwrap();
    let mut ts = vec![
        Tensor::ones([1000], (Kind::Float, device)),
        Tensor::full([10], 3.0, (Kind::Double, device)),
    ];
    pg.all_reduce(&mut ts, ReduceOp::Sum).unwrap();
    pg.all_reduce(&mut ts, ReduceOp::Avg).unwrap();
    pg.broadcast(&mut ts, 0).unwrap();
    pg.barrier().unwrap();
    assert_eq!(ts[0].sum(Kind::Double).double_value(&[]), 1000.0);
    assert_eq!(ts[1].sum(Kind::Double).double_value(&[]), 30.0);
    pg.shutdown().unwrap();
}
