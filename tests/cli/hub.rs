//! `shard build` from ImageNet as the Hugging Face hub shares it (`synth --format wds
//! --format parquet` writes the layouts): the same shard bytes as the folder build of
//! the same images, train and val, with the flags that say where labels and classes
//! are.

use std::collections::BTreeMap;
use std::path::Path;

use sv_tests::{fails, ok, s};

/// The shard files of a dataset folder.
fn shards(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svs"))
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

fn build(inputs: &[&Path], output: &Path, extra: &[&str]) -> String {
    let mut args = vec!["shard", "build", "--input"];
    args.extend(inputs.iter().map(|p| s(p)));
    args.extend_from_slice(&["--output", s(output), "--workers", "2", "--size", "64"]);
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn hub_layouts_build_the_shards_of_the_folder_build() {
    let t = tempfile::tempdir().unwrap();
    let root = sv_tests::synth_imagenet(
        t.path(),
        (3, 5, 2),
        5,
        &[
            "--format",
            "wds",
            "--format",
            "parquet",
            "--samples-per-file",
            "6",
        ],
    );
    let wds = root.join("wds");
    let pq = root.join("parquet");
    assert!(wds.join("imagenet1k-train-0002.tar").is_file());
    assert!(pq.join("train-00002-of-00003.parquet").is_file());
    let jpeg = ["--codec", "jpeg", "--max-shard-mib", "1"];

    let folder = t.path().join("folder");
    build(&[&root.join("train")], &folder, &jpeg);
    // The brace pattern as WebDataset writes it; classes from LOC_synset_mapping.txt
    // beside the tars.
    let from_wds = t.path().join("wds-train");
    let pattern = wds.join("imagenet1k-train-{0000..0002}.tar");
    let out = build(&[&pattern], &from_wds, &jpeg);
    assert!(out.contains("15 records"), "{out}");
    assert_eq!(shards(&from_wds), shards(&folder));
    assert_eq!(
        std::fs::read(from_wds.join("manifest.json")).unwrap(),
        std::fs::read(folder.join("manifest.json")).unwrap(),
        "same classes, same shards: the same manifest"
    );
    // A glob of parquet files; the classes from their ClassLabel metadata.
    let from_pq = t.path().join("pq-train");
    build(&[&pq.join("train-*.parquet")], &from_pq, &jpeg);
    assert_eq!(shards(&from_pq), shards(&folder));

    // Val, with train's classes: csv folder, WebDataset tars named one by one, the
    // parquet folder with --input-format, and the label from the .json field.
    let val_args = ["--split", "val", "--classes-from", s(&folder)];
    let val_args: Vec<&str> = jpeg.iter().copied().chain(val_args).collect();
    let csv = t.path().join("val-csv");
    build(&[&root.join("val")], &csv, &val_args);
    let v_wds = t.path().join("val-wds");
    let v0 = wds.join("imagenet1k-validation-0000.tar");
    build(&[&v0], &v_wds, &val_args);
    assert_eq!(shards(&v_wds), shards(&csv));
    let v_json = t.path().join("val-json");
    let mut args = val_args.clone();
    args.extend_from_slice(&["--label-key", "label"]);
    build(&[&v0], &v_json, &args);
    assert_eq!(shards(&v_json), shards(&csv));
    let v_pq = t.path().join("val-pq");
    let v_pq_file = pq.join("validation-00000-of-00001.parquet");
    let mut args = val_args.clone();
    args.extend_from_slice(&["--input-format", "parquet"]);
    build(&[&v_pq_file], &v_pq, &args);
    assert_eq!(shards(&v_pq), shards(&csv));

    // A label column that is not there, and a format that does not fit: errors that
    // say what is wrong.
    let err = fails(&[
        "shard",
        "build",
        "--input",
        s(&v_pq_file),
        "--output",
        s(&t.path().join("x")),
        "--label-column",
        "class",
    ]);
    assert!(err.contains("no label column `class`"), "{err}");
    let err = fails(&[
        "shard",
        "build",
        "--input",
        s(&pq),
        "--input",
        s(&v0),
        "--output",
        s(&t.path().join("y")),
    ]);
    assert!(err.contains("one build reads one kind"), "{err}");
}
