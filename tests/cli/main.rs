//! End-to-end tests: each module drives the real `supervision` binary on data it
//! generates (synthetic images, generated shards) and checks behaviour, not speed.

mod archives;
mod bench;
#[cfg(feature = "train")]
mod dist;
mod outputs;
mod pca;
mod shard;
mod startup;
mod synth;
#[cfg(feature = "train")]
mod train;
#[cfg(feature = "train")]
mod train_guards;
mod verify;
