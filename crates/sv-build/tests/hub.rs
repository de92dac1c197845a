//! Hub inputs (WebDataset tars, parquet files) end to end at the library level: the
//! same images give the same shard bytes as the folder tree they came from, `--part`
//! and merge hold, and hostile files are errors or rejects that name the file and the
//! member or row, with every good sample still written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, Repetition, Type as Physical};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use sv_build::hub::{HubOptions, InputFormat};
use sv_build::{BuildConfig, InputSpec, build};
use sv_core::Split;
use sv_shard::{Codec, Dataset};

/// `classes` class folders of `per_class` small JPEGs; returns the tree and its
/// images as (wnid/file, label, bytes) in the folder build's order.
fn tree(root: &Path, classes: usize, per_class: usize) -> (PathBuf, Vec<(String, u32, Vec<u8>)>) {
    let train = root.join("train");
    let mut all = Vec::new();
    for c in 0..classes {
        let wnid = format!("n{c:08}");
        let dir = train.join(&wnid);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let (w, h) = (
                40 + ((i * 37 + c * 11) % 60) as u32,
                36 + ((i * 23) % 50) as u32,
            );
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 255 / w) as u8,
                    (y * 255 / h) as u8,
                    (c * 70 + i * 9) as u8,
                ])
            });
            let name = format!("img_{i:03}.JPEG");
            img.save(dir.join(&name)).unwrap();
            all.push((
                format!("{wnid}/{name}"),
                c as u32,
                std::fs::read(dir.join(&name)).unwrap(),
            ));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    (train, all)
}

fn class_names(dir: &Path, classes: usize) -> PathBuf {
    let p = dir.join("classes.txt");
    let text: String = (0..classes)
        .map(|c| format!("n{c:08} class {c}\n"))
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// One WebDataset sample: its key and its members (extension, bytes).
type WdsSample<'a> = (String, Vec<(&'a str, Vec<u8>)>);

/// A WebDataset tar of `samples`, members in the order given.
fn wds_tar(path: &Path, samples: &[WdsSample<'_>]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (key, members) in samples {
        for (ext, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, format!("{key}.{ext}"), data.as_slice())
                .unwrap();
        }
    }
    b.finish().unwrap();
}

fn sample(path: &str, label: u32, bytes: &[u8]) -> (String, Vec<(&'static str, Vec<u8>)>) {
    let key = path.split_once('.').unwrap().0.to_string();
    (
        key,
        vec![
            ("jpg", bytes.to_vec()),
            ("cls", label.to_string().into_bytes()),
        ],
    )
}

/// A parquet file as the hub writes one: `image {bytes, path}`, `label`, ClassLabel
/// names in the `huggingface` metadata; `rows_per_group` rows a row group.
fn parquet_file(
    path: &Path,
    rows: &[(String, Option<i64>, Vec<u8>)],
    names: Option<&[String]>,
    rows_per_group: usize,
    compression: Compression,
) {
    let leaf = |name: &str, t: Physical| {
        Arc::new(
            Type::primitive_type_builder(name, t)
                .with_repetition(Repetition::OPTIONAL)
                .build()
                .unwrap(),
        )
    };
    let image = Type::group_type_builder("image")
        .with_repetition(Repetition::OPTIONAL)
        .with_fields(vec![
            leaf("bytes", Physical::BYTE_ARRAY),
            leaf("path", Physical::BYTE_ARRAY),
        ])
        .build()
        .unwrap();
    let schema = Type::group_type_builder("schema")
        .with_fields(vec![Arc::new(image), leaf("label", Physical::INT64)])
        .build()
        .unwrap();
    let mut props = WriterProperties::builder()
        .set_compression(compression)
        .set_dictionary_enabled(false);
    if let Some(names) = names {
        let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        let hf = format!(
            "{{\"info\": {{\"features\": {{\"image\": {{\"_type\": \"Image\"}}, \"label\": \
             {{\"names\": [{}], \"_type\": \"ClassLabel\"}}}}}}}}",
            list.join(", ")
        );
        props = props.set_key_value_metadata(Some(vec![KeyValue::new("huggingface".into(), hf)]));
    }
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props.build())).unwrap();
    for group in rows.chunks(rows_per_group) {
        let mut rg = w.next_row_group().unwrap();
        let images: Vec<ByteArray> = group.iter().map(|r| ByteArray::from(r.2.clone())).collect();
        let paths: Vec<ByteArray> = group
            .iter()
            .map(|r| ByteArray::from(r.0.as_str()))
            .collect();
        let labels: Vec<i64> = group.iter().filter_map(|r| r.1).collect();
        let label_defs: Vec<i16> = group.iter().map(|r| i16::from(r.1.is_some())).collect();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(&images, Some(&vec![2; images.len()]), None)
            .unwrap();
        c.close().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(&paths, Some(&vec![2; paths.len()]), None)
            .unwrap();
        c.close().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<Int64Type>()
            .write_batch(&labels, Some(&label_defs), None)
            .unwrap();
        c.close().unwrap();
        rg.close().unwrap();
    }
    w.close().unwrap();
}

fn config(input: &Path, output: &Path, workers: usize, hub: HubOptions) -> BuildConfig {
    BuildConfig {
        input: InputSpec {
            input: input.to_path_buf(),
            hub,
            ..Default::default()
        },
        output: output.to_path_buf(),
        split: Split::Train,
        codec: Codec::Jpeg,
        jpeg_quality: 90,
        jpeg_subsampling: sv_shard::Subsampling::default(),
        side: 32,
        workers,
        max_shard_bytes: 4096 + 2500,
        strict: false,
        max_reject_fraction: 1.0,
        force: false,
        hash_inputs: false,
        part: None,
    }
}

fn with_names(p: &Path) -> HubOptions {
    HubOptions {
        class_names: Some(p.to_path_buf()),
        ..Default::default()
    }
}

/// The shard files of a dataset folder, by name.
fn shards(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".svs"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn labels(dir: &Path) -> Vec<u32> {
    let ds = Dataset::open(dir).unwrap();
    (0..ds.len()).map(|i| ds.label(i).unwrap()).collect()
}

fn rows_of(images: &[(String, u32, Vec<u8>)]) -> Vec<(String, Option<i64>, Vec<u8>)> {
    images
        .iter()
        .map(|(p, l, b)| (p.clone(), Some(i64::from(*l)), b.clone()))
        .collect()
}

#[test]
fn wds_and_parquet_give_the_shards_of_the_folder_tree() {
    let t = tempfile::tempdir().unwrap();
    let (train, images) = tree(t.path(), 3, 5);
    let names = class_names(t.path(), 3);
    let folder = t.path().join("from-folder");
    let s = build(&config(&train, &folder, 2, HubOptions::default()), &|_| {}).unwrap();
    assert_eq!(s.manifest.records, 15);
    assert!(shards(&folder).len() > 2, "several shards");

    // WebDataset: two tars, found in their folder by content (no .tar needed).
    let wds = t.path().join("wds");
    std::fs::create_dir_all(&wds).unwrap();
    let samples: Vec<_> = images.iter().map(|(p, l, b)| sample(p, *l, b)).collect();
    wds_tar(&wds.join("part-0000.data"), &samples[..8]);
    wds_tar(&wds.join("part-0001.data"), &samples[8..]);
    for workers in [1, 3] {
        let out = t.path().join(format!("from-wds-{workers}"));
        let s = build(&config(&wds, &out, workers, with_names(&names)), &|_| {}).unwrap();
        assert!(s.rejects.is_empty(), "{:?}", s.rejects);
        assert_eq!(shards(&out), shards(&folder), "wds, {workers} workers");
        assert_eq!(labels(&out), labels(&folder));
    }

    // Parquet: one file, row groups of 4, snappy; class names from its metadata.
    let pq = t.path().join("train-00000-of-00001.parquet");
    let wnids: Vec<String> = (0..3).map(|c| format!("n{c:08}")).collect();
    parquet_file(&pq, &rows_of(&images), Some(&wnids), 4, Compression::SNAPPY);
    for workers in [1, 3] {
        let out = t.path().join(format!("from-parquet-{workers}"));
        let s = build(&config(&pq, &out, workers, HubOptions::default()), &|_| {}).unwrap();
        assert!(s.rejects.is_empty(), "{:?}", s.rejects);
        assert_eq!(shards(&out), shards(&folder), "parquet, {workers} workers");
        let m = sv_shard::Manifest::load(&out).unwrap();
        assert_eq!(m.classes[2].wnid, "n00000002", "ClassLabel names as wnids");
    }
    // zstd pages read the same.
    let pqz = t.path().join("z.parquet");
    let zstd = Compression::ZSTD(parquet::basic::ZstdLevel::default());
    parquet_file(&pqz, &rows_of(&images), Some(&wnids), 6, zstd);
    let out = t.path().join("from-zstd");
    build(&config(&pqz, &out, 2, HubOptions::default()), &|_| {}).unwrap();
    assert_eq!(shards(&out), shards(&folder), "zstd parquet");
}

#[test]
fn patterns_parts_and_merge() {
    let t = tempfile::tempdir().unwrap();
    let (_, images) = tree(t.path(), 2, 6);
    let names = class_names(t.path(), 2);
    let d = t.path().join("shards");
    std::fs::create_dir_all(&d).unwrap();
    let samples: Vec<_> = images.iter().map(|(p, l, b)| sample(p, *l, b)).collect();
    for (k, chunk) in samples.chunks(5).enumerate() {
        wds_tar(&d.join(format!("s-{k:04}.tar")), chunk);
    }
    let pattern = d.join("s-{0000..0002}.tar");
    let whole = t.path().join("whole");
    let s = build(&config(&pattern, &whole, 2, with_names(&names)), &|_| {}).unwrap();
    assert_eq!(s.manifest.records, 12);

    // A name the pattern expands to that does not exist.
    let missing = d.join("s-{0000..0003}.tar");
    let err = build(
        &config(&missing, &t.path().join("m"), 1, with_names(&names)),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("s-0003.tar") && err.contains("does not exist"),
        "{err}"
    );

    // Parts: more parts than files splits inside files; the merge is the whole.
    let parts: Vec<PathBuf> = (0..4).map(|k| t.path().join(format!("part{k}"))).collect();
    for (k, p) in parts.iter().enumerate() {
        let mut c = config(&pattern, p, 2, with_names(&names));
        c.part = Some(sv_build::Part { index: k, count: 4 });
        build(&c, &|_| {}).unwrap();
    }
    let merged = t.path().join("merged");
    sv_build::merge(&sv_build::MergeConfig {
        parts: parts.clone(),
        output: merged.clone(),
        force: false,
    })
    .unwrap();
    assert_eq!(labels(&merged), labels(&whole));
    let ds = (
        Dataset::open(&merged).unwrap(),
        Dataset::open(&whole).unwrap(),
    );
    for i in 0..ds.0.len() {
        assert_eq!(
            ds.0.record(i).unwrap().payload,
            ds.1.record(i).unwrap().payload
        );
    }

    // Glob for parquet, several files in name order.
    let wnids: Vec<String> = (0..2).map(|c| format!("n{c:08}")).collect();
    let rows = rows_of(&images);
    parquet_file(
        &d.join("p-1.parquet"),
        &rows[6..],
        Some(&wnids),
        4,
        Compression::SNAPPY,
    );
    parquet_file(
        &d.join("p-0.parquet"),
        &rows[..6],
        Some(&wnids),
        4,
        Compression::SNAPPY,
    );
    let out = t.path().join("globbed");
    build(
        &config(&d.join("p-*.parquet"), &out, 2, HubOptions::default()),
        &|_| {},
    )
    .unwrap();
    assert_eq!(labels(&out), labels(&whole));
    assert_eq!(shards(&out), shards(&whole));

    // Parquet parts start inside row groups (skipping rows); merged, the whole.
    let pparts: Vec<PathBuf> = (0..5)
        .map(|k| t.path().join(format!("pq-part{k}")))
        .collect();
    for (k, p) in pparts.iter().enumerate() {
        let mut c = config(&d.join("p-*.parquet"), p, 2, HubOptions::default());
        c.part = Some(sv_build::Part { index: k, count: 5 });
        build(&c, &|_| {}).unwrap();
    }
    let pmerged = t.path().join("pq-merged");
    sv_build::merge(&sv_build::MergeConfig {
        parts: pparts,
        output: pmerged.clone(),
        force: false,
    })
    .unwrap();
    assert_eq!(labels(&pmerged), labels(&whole));
    let pm = Dataset::open(&pmerged).unwrap();
    for i in 0..pm.len() {
        assert_eq!(
            pm.record(i).unwrap().payload,
            ds.1.record(i).unwrap().payload
        );
    }

    // A sample key repeated in a later tar is a reject naming both.
    wds_tar(&d.join("s-0003.tar"), &samples[..1]);
    let dup = t.path().join("dup");
    let s = build(
        &config(&d.join("s-{0000..0003}.tar"), &dup, 1, with_names(&names)),
        &|_| {},
    )
    .unwrap();
    assert_eq!(s.rejects.len(), 1, "{:?}", s.rejects);
    assert!(
        s.rejects[0].path == "s-0003.tar/n00000000/img_000.jpg"
            && s.rejects[0].reason.contains("also in s-0000.tar"),
        "{:?}",
        s.rejects
    );

    // A repeated build is up to date; a rewritten file is noticed.
    let again = build(&config(&pattern, &whole, 2, with_names(&names)), &|_| {}).unwrap();
    assert!(again.up_to_date);
    std::thread::sleep(std::time::Duration::from_millis(20));
    wds_tar(&d.join("s-0002.tar"), &samples[10..]);
    let again = build(&config(&pattern, &whole, 2, with_names(&names)), &|_| {}).unwrap();
    assert!(!again.up_to_date);
}

#[test]
fn hostile_webdataset_samples_are_rejects_naming_the_member() {
    let t = tempfile::tempdir().unwrap();
    let (_, images) = tree(t.path(), 2, 3);
    let names = class_names(t.path(), 2);
    let good: Vec<_> = images.iter().map(|(p, l, b)| sample(p, *l, b)).collect();
    let jpeg = images[0].2.clone();
    let mut samples = good.clone();
    samples.insert(1, ("x/no_label".into(), vec![("jpg", jpeg.clone())]));
    samples.insert(
        2,
        (
            "x/words".into(),
            vec![("jpg", jpeg.clone()), ("cls", b"seven".to_vec())],
        ),
    );
    samples.insert(
        3,
        (
            "x/far".into(),
            vec![("jpg", jpeg.clone()), ("cls", b"99".to_vec())],
        ),
    );
    samples.insert(
        4,
        (
            "x/text".into(),
            vec![("jpg", b"not an image".to_vec()), ("cls", b"1".to_vec())],
        ),
    );
    samples.insert(5, ("x/no_image".into(), vec![("cls", b"1".to_vec())]));
    samples.push(good[0].clone()); // a duplicate key, apart from its first copy
    samples.push((
        "x/by_json".into(),
        vec![("jpg", jpeg.clone()), ("json", br#"{"cls": 1}"#.to_vec())],
    ));
    let tar = t.path().join("hostile.tar");
    wds_tar(&tar, &samples);
    let out = t.path().join("out");
    let s = build(&config(&tar, &out, 2, with_names(&names)), &|_| {}).unwrap();
    let got: BTreeMap<&str, &str> = s
        .rejects
        .iter()
        .map(|r| (r.path.as_str(), r.reason.as_str()))
        .collect();
    let has = |path: &str, words: &str| {
        let r = got
            .get(path)
            .unwrap_or_else(|| panic!("no reject {path}: {got:?}"));
        assert!(r.contains(words), "{path}: {r}");
    };
    has("hostile.tar/x/no_label.jpg", "no label");
    has("hostile.tar/x/words.jpg", "class index");
    has("hostile.tar/x/far.jpg", "outside the class list");
    has("hostile.tar/x/no_image.cls", "no image member");
    has("hostile.tar/n00000000/img_000.jpg", "duplicate key");
    assert!(got.contains_key("hostile.tar/x/text.jpg"), "{got:?}");
    assert_eq!(s.rejects.len(), 6, "{got:?}");
    // Every good sample, and the one labelled through its .json, is written.
    assert_eq!(s.manifest.records, 7);

    // A tar cut inside a member, and a header declaring 10 GB: errors naming the file
    // and the member, before anything is written.
    let bytes = std::fs::read(&tar).unwrap();
    let cut = t.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = build(
        &config(&cut, &t.path().join("o2"), 1, with_names(&names)),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cut.tar") && err.contains("truncated"),
        "{err}"
    );
    assert!(!t.path().join("o2/manifest.json").exists());

    let huge = t.path().join("huge.tar");
    let mut h = tar::Header::new_ustar();
    h.set_path("big/sample.jpg").unwrap();
    h.set_size(10 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&huge, &raw).unwrap();
    let err = build(
        &config(
            &huge,
            &t.path().join("o3"),
            1,
            HubOptions {
                format: Some(InputFormat::Wds),
                class_names: Some(names.clone()),
                ..Default::default()
            },
        ),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("big/sample.jpg") && err.contains("10737418240 bytes"),
        "{err}"
    );
}

#[test]
fn hostile_parquet_files_are_errors_or_rejects_naming_the_row() {
    let t = tempfile::tempdir().unwrap();
    let (_, images) = tree(t.path(), 2, 6);
    let wnids: Vec<String> = (0..2).map(|c| format!("n{c:08}")).collect();
    let mut rows = rows_of(&images);
    rows[1].2 = b"these bytes are not an image".to_vec();
    rows[2].1 = None; // a null label
    rows[3].1 = Some(7); // outside the class list
    let pq = t.path().join("h.parquet");
    parquet_file(&pq, &rows, Some(&wnids), 4, Compression::UNCOMPRESSED);
    let out = t.path().join("out");
    let s = build(&config(&pq, &out, 2, HubOptions::default()), &|_| {}).unwrap();
    let reasons: Vec<String> = s
        .rejects
        .iter()
        .map(|r| format!("{}: {}", r.path, r.reason))
        .collect();
    assert_eq!(s.rejects.len(), 3, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("h.parquet row 1 (n00000000/img_001.JPEG)")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("row 2") && r.contains("null")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("row 3") && r.contains("outside the class list")),
        "{reasons:?}"
    );
    assert_eq!(s.manifest.records, 9);

    // A corrupt page header in row group 1's image column: its rows are rejects that
    // name them; row groups 0 and 2 are written.
    let good = t.path().join("g.parquet");
    parquet_file(
        &good,
        &rows_of(&images),
        Some(&wnids),
        4,
        Compression::SNAPPY,
    );
    let mut bytes = std::fs::read(&good).unwrap();
    let offset = {
        use parquet::file::reader::FileReader;
        let r = parquet::file::serialized_reader::SerializedFileReader::new(
            std::fs::File::open(&good).unwrap(),
        )
        .unwrap();
        r.metadata().row_group(1).column(0).data_page_offset() as usize
    };
    for b in &mut bytes[offset..offset + 24] {
        *b = 0xff;
    }
    let bad = t.path().join("corrupt.parquet");
    std::fs::write(&bad, &bytes).unwrap();
    let out = t.path().join("out-corrupt");
    let s = build(&config(&bad, &out, 2, HubOptions::default()), &|_| {}).unwrap();
    let paths: Vec<&str> = s.rejects.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(s.rejects.len(), 4, "{:?}", s.rejects);
    assert!(
        paths.iter().all(|p| p.starts_with("corrupt.parquet row ")),
        "{paths:?}"
    );
    assert!(
        s.rejects.iter().all(|r| r.reason.contains("row group 1")),
        "{:?}",
        s.rejects
    );
    assert_eq!(s.manifest.records, 8);

    // Truncated: an error naming the file, before anything is written.
    let cut = t.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
    let err = build(
        &config(&cut, &t.path().join("o2"), 1, HubOptions::default()),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cut.parquet") && err.contains("truncated"),
        "{err}"
    );
    assert!(!t.path().join("o2/manifest.json").exists());

    // No image column: an error listing the columns there are.
    let noimg = t.path().join("labels-only.parquet");
    {
        let schema = Type::group_type_builder("schema")
            .with_fields(vec![Arc::new(
                Type::primitive_type_builder("label", Physical::INT64)
                    .with_repetition(Repetition::REQUIRED)
                    .build()
                    .unwrap(),
            )])
            .build()
            .unwrap();
        let f = std::fs::File::create(&noimg).unwrap();
        let mut w = SerializedFileWriter::new(f, Arc::new(schema), Default::default()).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<Int64Type>()
            .write_batch(&[0, 1], None, None)
            .unwrap();
        c.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
    }
    let err = build(
        &config(&noimg, &t.path().join("o3"), 1, HubOptions::default()),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no image column") && err.contains("label"),
        "{err}"
    );

    // Without class names anywhere: an error saying how to give them.
    let anon = t.path().join("anon").join("a.parquet");
    std::fs::create_dir_all(anon.parent().unwrap()).unwrap();
    parquet_file(&anon, &rows_of(&images), None, 4, Compression::SNAPPY);
    let err = build(
        &config(&anon, &t.path().join("o4"), 1, HubOptions::default()),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--class-names"), "{err}");
}

/// Files written by webdataset's TarWriter and by pyarrow (tools/fixtures/
/// make_hub_fixtures.py) read as written: the same shards as the folder tree.
#[test]
fn files_written_by_webdataset_and_pyarrow_read_as_written() {
    let t = tempfile::tempdir().unwrap();
    let (train, _) = tree(t.path(), 3, 4);
    let fixtures = t.path().join("hub");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/make_hub_fixtures.py");
    let run = std::process::Command::new("python3")
        .arg(&script)
        .arg(&train)
        .arg(&fixtures)
        .output();
    match run {
        Ok(o) if o.status.success() => {}
        Ok(o) if o.status.code() == Some(3) => {
            eprintln!(
                "SKIPPED files_written_by_webdataset_and_pyarrow_read_as_written: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Ok(o) => panic!(
            "make_hub_fixtures.py failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            eprintln!(
                "SKIPPED files_written_by_webdataset_and_pyarrow_read_as_written: no python3 ({e})"
            );
            return;
        }
    }
    let folder = t.path().join("from-folder");
    build(&config(&train, &folder, 2, HubOptions::default()), &|_| {}).unwrap();
    let names = fixtures.join("classes.txt");
    let wds = t.path().join("from-wds");
    let pattern = fixtures.join("wds-{0000..0001}.tar");
    let s = build(&config(&pattern, &wds, 2, with_names(&names)), &|_| {}).unwrap();
    assert!(s.rejects.is_empty(), "{:?}", s.rejects);
    assert_eq!(shards(&wds), shards(&folder));
    let pq = t.path().join("from-parquet");
    let s = build(
        &config(
            &fixtures.join("data.parquet"),
            &pq,
            2,
            HubOptions::default(),
        ),
        &|_| {},
    )
    .unwrap();
    assert!(s.rejects.is_empty(), "{:?}", s.rejects);
    assert_eq!(shards(&pq), shards(&folder));
}

/// A build cut short after its second shard (a panic in the progress callback stands
/// in for kill -9: the journal holds what was finished) resumes from there, reading
/// the WebDataset tars or the parquet file from the middle, and ends byte-identical.
#[test]
fn an_interrupted_build_resumes_mid_file() {
    let t = tempfile::tempdir().unwrap();
    let (train, images) = tree(t.path(), 2, 8);
    let names = class_names(t.path(), 2);
    let folder = t.path().join("folder");
    build(&config(&train, &folder, 2, HubOptions::default()), &|_| {}).unwrap();
    let wds = t.path().join("s.tar");
    let samples: Vec<_> = images.iter().map(|(p, l, b)| sample(p, *l, b)).collect();
    wds_tar(&wds, &samples);
    let pq = t.path().join("s.parquet");
    let wnids: Vec<String> = (0..2).map(|c| format!("n{c:08}")).collect();
    parquet_file(&pq, &rows_of(&images), Some(&wnids), 5, Compression::SNAPPY);
    for (input, hub) in [(&wds, with_names(&names)), (&pq, HubOptions::default())] {
        let out = t
            .path()
            .join(format!("out-{}", input.extension().unwrap().display()));
        let cfg = config(input, &out, 2, hub);
        let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            build(&cfg, &|p| {
                if let sv_build::Progress::Shard { shards: 2 } = p {
                    panic!("cut short");
                }
            })
        }));
        assert!(cut.is_err(), "the first run stops");
        assert!(out.join(sv_build::JOURNAL_FILE).exists());
        let s = build(&cfg, &|_| {}).unwrap();
        assert!(
            s.resumed_shards >= 1,
            "{}: resumed {}",
            input.display(),
            s.resumed_shards
        );
        assert_eq!(shards(&out), shards(&folder), "{}", input.display());
    }
}
