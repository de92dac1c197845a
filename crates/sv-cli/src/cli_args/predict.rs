//! The flags of `supervision predict`.

use std::path::PathBuf;

use crate::args::{at_least_one, count_up_to};

/// Flags of `supervision predict`.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    /// Checkpoint written by `supervision train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Side of the stored square the image is first reduced to (the shards' side).
    /// Default: the side of the images the checkpoint was trained on (older
    /// checkpoints: of its mean image if it has one, else 256).
    #[arg(long, allow_negative_numbers = true, value_parser = count_up_to(super::MAX_SIDE))]
    pub size: Option<u32>,
    /// How many classes to print per image.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = at_least_one::<usize>)]
    pub top: usize,
    /// Average the ten views instead of the centre crop.
    #[arg(long)]
    pub ten_crop: bool,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
