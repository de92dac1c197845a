//! Shared generators: the reference script's image formula and dataset writing.

use std::path::Path;

use sv_core::{ClassInfo, Split};
use sv_shard::{Codec, DatasetWriter, WriterConfig};

/// `tools/fixtures/pca_reference.py`'s `generate(n, side)`, bit for bit: images as
/// `n x side x side x 3` bytes, HWC.
pub fn generate(n: u32, side: u32) -> Vec<Vec<u8>> {
    let mix = |mut v: u32| {
        v ^= v >> 15;
        v = v.wrapping_mul(0x2C1B_3C6D);
        v ^ (v >> 12)
    };
    (0..n)
        .map(|i| {
            let mut img = Vec::with_capacity((side * side * 3) as usize);
            for y in 0..side {
                for x in 0..side {
                    let key = i.wrapping_mul(73_856_093)
                        ^ y.wrapping_mul(19_349_663)
                        ^ x.wrapping_mul(83_492_791);
                    let h = |c: u32| mix(key ^ c.wrapping_mul(2_654_435_761));
                    let base = (i * 37 + y * 11 + x * 5) % 160;
                    img.push((base + h(0) % 96) as u8);
                    img.push((3 * base / 4 + h(1) % 64 + 40) as u8);
                    img.push((base / 2 + h(2) % 128) as u8);
                }
            }
            img
        })
        .collect()
}

/// Write `images` as a dataset in `dir`; `max_shard_bytes` small forces several shards.
pub fn write_dataset(
    dir: &Path,
    side: u32,
    codec: Codec,
    images: &[Vec<u8>],
    max_shard_bytes: u64,
) {
    let config = WriterConfig {
        split: Split::Train,
        side,
        codec,
        jpeg_quality: 95,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes: vec![
            ClassInfo {
                wnid: "n00000001".into(),
                name: "one".into(),
            },
            ClassInfo {
                wnid: "n00000002".into(),
                name: "two".into(),
            },
        ],
        max_shard_bytes,
    };
    let mut w = DatasetWriter::create(dir, config).unwrap();
    for (i, img) in images.iter().enumerate() {
        w.push((i % 2) as u32, img).unwrap();
    }
    w.finish().unwrap();
}
