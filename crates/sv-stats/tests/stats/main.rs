//! sv-stats integration tests: against the numpy reference's committed fixtures,
//! merge-grouping properties, and the dataset pass over generated shard datasets.

mod common;
mod dataset;
mod merge;
mod reference;
