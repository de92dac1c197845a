//! `write_hub`: the synthetic set as WebDataset tars and parquet files builds the same
//! shards as its folder tree (and, with the class list beside the tars, the same
//! manifest), train and val.

use std::collections::BTreeMap;
use std::path::Path;

use sv_build::hub::HubOptions;
use sv_build::{BuildConfig, InputSpec, build};
use sv_synth::hub::{HubFormat, write_hub};

fn config(input: &Path, output: &Path, split: sv_core::Split) -> BuildConfig {
    BuildConfig {
        input: InputSpec {
            input: input.to_path_buf(),
            ..Default::default()
        },
        output: output.to_path_buf(),
        split,
        codec: sv_shard::Codec::Jpeg,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        side: 32,
        workers: 2,
        max_shard_bytes: 4096 + 3000,
        strict: false,
        // Hostile inputs here reject far more than a real build's share.
        max_reject_fraction: 1.0,
        force: false,
        hash_inputs: false,
        part: None,
    }
}

fn files(dir: &Path, suffix: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

#[test]
fn hub_layouts_build_the_shards_of_the_folders() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("synth");
    let synth = sv_synth::SynthConfig {
        classes: 3,
        per_class: 4,
        val_per_class: 2,
        min_side: 40,
        max_side: 90,
        ..Default::default()
    };
    sv_synth::generate(&root, &synth, |_, _| {}).unwrap();
    let w = write_hub(&root, HubFormat::Wds, 5).unwrap();
    assert_eq!(w.samples, 18);
    assert_eq!(w.files.len(), 3 + 2, "train 5+5+2, val 5+1");
    let p = write_hub(&root, HubFormat::Parquet, 7).unwrap();
    assert_eq!(p.files.len(), 2 + 1);

    let train = sv_core::Split::Train;
    let folder = t.path().join("folder");
    build(&config(&root.join("train"), &folder, train), &|_| {}).unwrap();
    let wds = t.path().join("wds");
    let pattern = root.join("wds/imagenet1k-train-{0000..0002}.tar");
    build(&config(&pattern, &wds, train), &|_| {}).unwrap();
    assert_eq!(files(&wds, ".svs"), files(&folder, ".svs"));
    assert_eq!(
        files(&wds, "manifest.json"),
        files(&folder, "manifest.json")
    );
    let pq = t.path().join("pq");
    build(
        &config(&root.join("parquet/train-*.parquet"), &pq, train),
        &|_| {},
    )
    .unwrap();
    assert_eq!(files(&pq, ".svs"), files(&folder, ".svs"));
    // The ClassLabel names are the classes' names; the wnids are class indices.
    let m = sv_shard::Manifest::load(&pq).unwrap();
    let f = sv_shard::Manifest::load(&folder).unwrap();
    assert_eq!(m.classes[1].wnid, "0001");
    assert_eq!(m.classes[1].name, f.classes[1].name);

    // Val against the csv-labelled folder, with train's classes.
    let val = sv_core::Split::Val;
    let with_classes = |mut c: BuildConfig| {
        c.input.classes = Some(f.classes.clone());
        c
    };
    let csv = t.path().join("val-csv");
    build(&with_classes(config(&root.join("val"), &csv, val)), &|_| {}).unwrap();
    let vw = t.path().join("val-wds");
    let mut c = with_classes(config(&root.join("wds"), &vw, val));
    c.input.input = root.join("wds/imagenet1k-validation-0000.tar");
    c.input.hub = HubOptions {
        more_inputs: vec![root.join("wds/imagenet1k-validation-0001.tar")],
        label_key: Some("label".into()),
        ..Default::default()
    };
    build(&c, &|_| {}).unwrap();
    assert_eq!(files(&vw, ".svs"), files(&csv, ".svs"));
    let vp = t.path().join("val-pq");
    let input = root.join("parquet/validation-00000-of-00001.parquet");
    build(&with_classes(config(&input, &vp, val)), &|_| {}).unwrap();
    assert_eq!(files(&vp, ".svs"), files(&csv, ".svs"));
}
