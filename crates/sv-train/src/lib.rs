//! sv-train: AlexNet on libtorch (through tch), as the 2012 paper trained it.
//!
//! - [`model`]: `alexnet` (two towers as channel groups, LRN, 227 input, the paper's
//!   init), `alexnet-owt` (torchvision's single tower, its parameter names), and tiny
//!   versions of both for CPU tests; summaries with parameter counts.
//! - [`lrn`]: local response normalisation, exact, from `avg_pool3d` window sums.
//! - [`params`]: the parameters in flat buffers (fp32 master weights, gradients, a
//!   bf16/fp16 compute copy) and the precision of the passes.
//! - [`optim`]: the paper's momentum and weight-decay rule on the flat buffers, fp16
//!   loss scaling.
//! - [`schedule`]: divide-by-10-on-plateau, fixed steps, constant.
//! - [`input`]: uint8 crops to normalised float on the device (flips, PCA lighting).
//! - [`prefetch`]: the double-buffered prefetch thread and pinned staging.
//! - [`trainer`]: the loop as named steps (train an epoch, validate, end the epoch:
//!   schedule, record, checkpoints), data-wait measurement, resume; data-parallel
//!   training over sv-dist's collectives ([`trainer::Trainer::distribute`]).
//! - [`window`]: metrics windows and totals; device values read a window later.
//! - [`eval`]: top-1/top-5 error, centre crop and ten-crop.
//! - [`config`]: a run's settings: what fixes it ([`config::RunSpec`]) and what may
//!   change between invocations ([`config::RunLimits`]); the resume rules.
//! - [`checkpoint`]: atomic safetensors checkpoints with JSON metadata.
//! - [`metrics`]: the JSON-lines metrics log and top-k counting.
//! - [`data`]: the training data source over sv-pipeline's loader.
//! - [`files`]: the names of a run's files in its output folder.
//! - [`runlock`]: one training process per output folder; dead writers' leftovers go.
//! - [`stop`]: a graceful stop on SIGTERM, SIGINT or SIGUSR1 (preempted jobs).
//!
//! This is the only crate of the workspace that links libtorch.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod eval;
pub mod files;
pub mod input;
pub mod lrn;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod params;
pub mod prefetch;
pub mod runlock;
pub mod schedule;
pub mod stop;
pub mod trainer;
pub mod window;

pub use error::{Result, TrainError};
/// The data-parallel crate (launchers, NCCL, the Collective trait), re-exported so the
/// CLI hands the trainer the same version's collective.
pub use sv_dist;
/// The loader crate, re-exported so callers configure [`data::PipelineSource`] with
/// the same version.
pub use sv_pipeline;
pub use tch::Device;

/// Picks the device for `auto`, `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" if tch::Cuda::is_available() => cuda(0),
        "auto" => Ok(Device::Cpu),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        _ => match s
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(i) => cuda(i),
            None => Err(TrainError::Config(format!(
                "unknown device `{s}` (auto, cpu, cuda, cuda:N)"
            ))),
        },
    }
}

fn cuda(i: usize) -> Result<Device> {
    if !tch::Cuda::is_available() {
        return Err(TrainError::Config(
            "CUDA requested but libtorch sees no CUDA device".into(),
        ));
    }
    let n = tch::Cuda::device_count() as usize;
    if i >= n {
        return Err(TrainError::Config(format!(
            "cuda:{i} requested, {n} CUDA devices present"
        )));
    }
    // cuDNN picks the fastest convolution algorithms for the fixed batch shape.
    tch::Cuda::cudnn_set_benchmark(true);
    Ok(Device::Cuda(i))
}

/// Whether libtorch can use a CUDA device here.
pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        if !cuda_available() {
            assert_eq!(parse_device("auto").unwrap(), Device::Cpu);
            assert!(
                parse_device("cuda").is_err(),
                "no CUDA here: asking for it is an error"
            );
        }
    }
}
