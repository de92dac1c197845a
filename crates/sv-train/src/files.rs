//! The names of the files a training run keeps in its output folder (a leaf module:
//! the trainer, the metrics log, the run lock and the CLI all name them from here).

/// Name of the latest checkpoint in the output directory.
pub const LAST_CHECKPOINT: &str = "last.safetensors";
/// Name of the checkpoint with the best validation top-1 error.
pub const BEST_CHECKPOINT: &str = "best.safetensors";
/// Name of the metrics log in the output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
