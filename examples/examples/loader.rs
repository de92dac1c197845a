//! Stream training batches from a shard dataset with the sv-pipeline loader.
//!
//! `cargo run --release -p sv-examples --example loader -- SHARD_DIR`
//!
//! Without an argument it writes a small generated raw dataset to a temporary
//! directory first, so the example runs anywhere.

use std::sync::Arc;

use sv_pipeline::{Augment, Layout, Loader, LoaderConfig, Output};
use sv_shard::Dataset;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (dir, generated) = match std::env::args().nth(1) {
        Some(dir) => (std::path::PathBuf::from(dir), false),
        None => (generated_dataset()?, true),
    };
    let dataset = Arc::new(Dataset::open(&dir)?);
    let config = LoaderConfig {
        batch_size: 64,
        seed: 42,
        epochs: Some(1),
        augment: Augment::train(227), // random 227 crop, flip, paper PCA lighting
        output: Output::U8(Layout::Nchw),
        ..LoaderConfig::default() // workers = cores, shuffled, drop last
    };
    let loader = Loader::new(dataset, config)?;
    for batch in loader {
        let batch = batch?; // a damaged record names its shard and record
        let [n, c, h, w] = batch.shape();
        let pixels = batch.pixels_u8().unwrap_or_default();
        let mean = pixels.iter().map(|&v| f64::from(v)).sum::<f64>() / pixels.len() as f64;
        println!(
            "epoch {} batch {}: {n}x{c}x{h}x{w} u8, mean {mean:.1}, first labels {:?}, \
             first lighting offset {:?}, flipped {}",
            batch.position().epoch,
            batch.position().batch,
            &batch.labels()[..4.min(n)],
            batch.lighting()[0],
            batch.windows().iter().filter(|w| w.flip).count(),
        );
        // batch.next_position() is the resume point to keep in a checkpoint;
        // dropping `batch` returns its buffers to the loader's pool.
    }
    if generated {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// 256 generated 256x256 images in 4 classes, as a raw shard dataset.
fn generated_dataset() -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    use sv_core::{ClassInfo, Split};
    use sv_shard::{Codec, DatasetWriter, WriterConfig};
    let dir = std::env::temp_dir().join(format!("sv-loader-example-{}", std::process::id()));
    let classes = (0..4)
        .map(|c| ClassInfo {
            wnid: format!("n{c:08}"),
            name: format!("class {c}"),
        })
        .collect();
    let config = WriterConfig {
        split: Split::Train,
        side: 256,
        codec: Codec::Raw,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        classes,
        max_shard_bytes: 16 << 20,
    };
    let mut writer = DatasetWriter::create(&dir, config)?;
    let mut image = vec![0u8; 256 * 256 * 3];
    for i in 0..256usize {
        for (p, v) in image.iter_mut().enumerate() {
            *v = ((p / 768 + p % 768 / 3 + i * 5) % 256) as u8;
        }
        writer.push((i % 4) as u32, &image)?;
    }
    writer.finish()?;
    println!("generated a 256-image raw dataset in {}", dir.display());
    Ok(dir)
}
