//! Small generated datasets for the pipeline tests.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use sv_core::{ClassInfo, Split};
use sv_shard::{Codec, Dataset, DatasetWriter, WriterConfig};

/// Image `i` of a generated dataset: a gradient plus an index-dependent pattern, so
/// every record and every position differs.
pub fn pixels(i: usize, side: u32) -> Vec<u8> {
    let s = side as usize;
    let mut v = Vec::with_capacity(s * s * 3);
    for y in 0..s {
        for x in 0..s {
            for c in 0..3 {
                v.push(((x * 7 + y * 13 + c * 50 + i * 31) ^ (i * 3 + y)) as u8);
            }
        }
    }
    v
}

/// Write `n` images of `side` to `dir` (labels `i % 5`) and open the dataset.
pub fn dataset(
    dir: &Path,
    n: usize,
    side: u32,
    codec: Codec,
    max_shard_bytes: u64,
) -> Arc<Dataset> {
    let classes = (0..5)
        .map(|c| ClassInfo {
            wnid: format!("n{c:08}"),
            name: format!("class {c}"),
        })
        .collect();
    let config = WriterConfig {
        split: Split::Train,
        side,
        codec,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes,
        max_shard_bytes,
    };
    let mut w = DatasetWriter::create(dir, config).expect("create dataset");
    for i in 0..n {
        w.push((i % 5) as u32, &pixels(i, side)).expect("push");
    }
    w.finish().expect("finish");
    Arc::new(Dataset::open(dir).expect("open dataset"))
}
