//! The flags of `supervision eval`.

use std::path::PathBuf;

use crate::args::{MAX_BATCH_SIZE, at_least_one, count_up_to};

/// Flags of `supervision eval`.
#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint written by `supervision train` (last.safetensors, best.safetensors).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Validation shard set.
    #[arg(long)]
    pub val: PathBuf,
    /// Average the softmax of ten views (corners, centre, reflections) as the paper.
    #[arg(long)]
    pub ten_crop: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = count_up_to(MAX_BATCH_SIZE))]
    pub batch_size: usize,
    /// Score only the first N images.
    #[arg(long, allow_negative_numbers = true, value_parser = at_least_one::<usize>)]
    pub limit: Option<usize>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}
