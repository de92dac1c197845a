//! The synthetic set in the layouts the Hugging Face hub shares ImageNet in, so
//! `shard build` from them can be tried and tested without Python:
//!
//! ```text
//! OUT/wds/imagenet1k-train-{0000..}.tar        WebDataset: KEY.jpg + KEY.cls (+ KEY.json)
//! OUT/wds/imagenet1k-validation-{0000..}.tar   (as timm/imagenet-1k-wds names them)
//! OUT/wds/LOC_synset_mapping.txt               the class list, in index order
//! OUT/parquet/train-00000-of-0000N.parquet     rows {image: {bytes, path}, label}, snappy,
//! OUT/parquet/validation-00000-of-0000N.parquet  ClassLabel names in `huggingface` metadata
//! ```
//!
//! Written from the folder tree [`crate::generate`] made, the same bytes in the same
//! order as a folder build reads them (train sorted by `wnid/file` path, val by file
//! name), so the shards built from any of the three layouts are byte-identical. Keys
//! are the path without its extension (`n9000000/n9000000_1`); labels are class
//! indices. Deterministic: tar headers carry no times or owners.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{Compression, Repetition, Type as Physical};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;
use sv_core::ClassInfo;

use crate::SynthError;

/// Which hub layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubFormat {
    /// WebDataset tars.
    Wds,
    /// Parquet files.
    Parquet,
}

/// What [`write_hub`] wrote, paths relative to the output folder.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HubSummary {
    /// The files, train first.
    pub files: Vec<PathBuf>,
    /// Samples (rows) written over all files.
    pub samples: u64,
}

/// One sample: its key (path without extension), file, label.
struct Item {
    key: String,
    file: PathBuf,
    label: u32,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> SynthError {
    SynthError::Encode {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The class list `generate` wrote (`LOC_synset_mapping.txt`).
fn classes(out: &Path) -> Result<Vec<ClassInfo>, SynthError> {
    let p = out.join("LOC_synset_mapping.txt");
    let text = fs::read_to_string(&p).map_err(io(&p))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (w, n) = l.trim().split_once(' ')?;
            Some(ClassInfo {
                wnid: w.into(),
                name: n.into(),
            })
        })
        .collect())
}

/// Train: `train/<wnid>/<file>` sorted by path bytes. Val: `val/<file>` sorted by name,
/// labelled from `LOC_val_solution.csv`.
fn items(out: &Path, classes: &[ClassInfo]) -> Result<(Vec<Item>, Vec<Item>), SynthError> {
    let index: std::collections::HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.wnid.as_str(), i as u32))
        .collect();
    let mut train = Vec::new();
    for (i, c) in classes.iter().enumerate() {
        let dir = out.join("train").join(&c.wnid);
        for name in sorted_names(&dir)? {
            train.push(Item {
                key: format!("{}/{}", c.wnid, stem(&name)),
                file: dir.join(&name),
                label: i as u32,
            });
        }
    }
    // The folder build's order: the bytes of `wnid/file`.
    train.sort_by_key(rel);
    let csv_path = out.join("LOC_val_solution.csv");
    let csv = fs::read_to_string(&csv_path).map_err(io(&csv_path))?;
    let mut labels = std::collections::HashMap::new();
    for line in csv.lines().skip(1) {
        if let Some((id, pred)) = line.split_once(',')
            && let Some(w) = pred.split_whitespace().next()
            && let Some(&l) = index.get(w)
        {
            labels.insert(id.to_string(), l);
        }
    }
    let mut val = Vec::new();
    let dir = out.join("val");
    for name in sorted_names(&dir)? {
        let s = stem(&name).to_string();
        let label = *labels
            .get(&s)
            .ok_or_else(|| bad(&csv_path, format!("no label for {s}")))?;
        val.push(Item {
            key: s,
            file: dir.join(&name),
            label,
        });
    }
    Ok((train, val))
}

fn rel(it: &Item) -> Vec<u8> {
    let name = it.file.file_name().unwrap_or_default().to_string_lossy();
    let wnid = it.key.split_once('/').map_or("", |(w, _)| w);
    format!("{wnid}/{name}").into_bytes()
}

fn stem(name: &str) -> &str {
    name.split_once('.').map_or(name, |(s, _)| s)
}

fn sorted_names(dir: &Path) -> Result<Vec<String>, SynthError> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    Ok(v)
}

/// Write the set [`crate::generate`] made under `out` in `format`, at most
/// `per_file` samples a file (at least 1).
pub fn write_hub(out: &Path, format: HubFormat, per_file: usize) -> Result<HubSummary, SynthError> {
    if per_file == 0 {
        return Err(SynthError::InvalidConfig(
            "samples per file must be at least 1".into(),
        ));
    }
    let classes = classes(out)?;
    let (train, val) = items(out, &classes)?;
    let mut summary = HubSummary::default();
    let (dir, names): (&str, [&str; 2]) = match format {
        HubFormat::Wds => ("wds", ["imagenet1k-train", "imagenet1k-validation"]),
        HubFormat::Parquet => ("parquet", ["train", "validation"]),
    };
    let folder = out.join(dir);
    fs::create_dir_all(&folder).map_err(io(&folder))?;
    for (items, name) in [(&train, names[0]), (&val, names[1])] {
        let chunks: Vec<&[Item]> = items.chunks(per_file).collect();
        let n = chunks.len();
        for (k, chunk) in chunks.into_iter().enumerate() {
            let file = match format {
                HubFormat::Wds => format!("{name}-{k:04}.tar"),
                HubFormat::Parquet => format!("{name}-{k:05}-of-{n:05}.parquet"),
            };
            let path = folder.join(&file);
            let bytes = match format {
                HubFormat::Wds => wds_bytes(chunk)?,
                HubFormat::Parquet => parquet_bytes(chunk, &classes, &path)?,
            };
            sv_core::fs::write_atomic(&path, &bytes)?;
            summary.files.push(PathBuf::from(dir).join(file));
            summary.samples += chunk.len() as u64;
        }
    }
    if format == HubFormat::Wds {
        let map = fs::read(out.join("LOC_synset_mapping.txt")).map_err(io(out))?;
        sv_core::fs::write_atomic(folder.join("LOC_synset_mapping.txt"), &map)?;
    }
    Ok(summary)
}

/// One WebDataset tar: `KEY.jpg`, `KEY.cls`, `KEY.json` per sample, in order.
fn wds_bytes(items: &[Item]) -> Result<Vec<u8>, SynthError> {
    let mut b = tar::Builder::new(Vec::new());
    for it in items {
        let image = fs::read(&it.file).map_err(io(&it.file))?;
        let json = format!(
            "{{\"filename\": \"{}\", \"label\": {}}}",
            it.file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            it.label
        );
        for (ext, data) in [
            ("jpg", image.as_slice()),
            ("cls", it.label.to_string().as_bytes()),
            ("json", json.as_bytes()),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o444);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, format!("{}.{ext}", it.key), data)
                .map_err(io(&it.file))?;
        }
    }
    b.into_inner().map_err(io(Path::new("tar")))
}

/// One parquet file as the hub's `datasets` writes an image dataset: an optional
/// `image` struct of `bytes` and `path`, an optional int64 `label`, snappy pages, the
/// ClassLabel names in the `huggingface` key-value metadata.
fn parquet_bytes(
    items: &[Item],
    classes: &[ClassInfo],
    path: &Path,
) -> Result<Vec<u8>, SynthError> {
    let e = |err: parquet::errors::ParquetError| bad(path, err.to_string());
    let leaf = |name: &str, t: Physical, logical: Option<parquet::basic::LogicalType>| {
        Type::primitive_type_builder(name, t)
            .with_repetition(Repetition::OPTIONAL)
            .with_logical_type(logical)
            .build()
            .map(Arc::new)
    };
    let image = Type::group_type_builder("image")
        .with_repetition(Repetition::OPTIONAL)
        .with_fields(vec![
            leaf("bytes", Physical::BYTE_ARRAY, None).map_err(e)?,
            leaf(
                "path",
                Physical::BYTE_ARRAY,
                Some(parquet::basic::LogicalType::String),
            )
            .map_err(e)?,
        ])
        .build()
        .map_err(e)?;
    let schema = Type::group_type_builder("schema")
        .with_fields(vec![
            Arc::new(image),
            leaf("label", Physical::INT64, None).map_err(e)?,
        ])
        .build()
        .map_err(e)?;
    let names: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
    let hf = serde_json_like(&names);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![KeyValue::new("huggingface".into(), hf)]))
        .set_max_row_group_row_count(Some(64))
        .build();
    let mut w =
        SerializedFileWriter::new(Vec::new(), Arc::new(schema), Arc::new(props)).map_err(e)?;
    for group in items.chunks(64) {
        let mut images = Vec::new();
        let mut paths = Vec::new();
        for it in group {
            images.push(ByteArray::from(fs::read(&it.file).map_err(io(&it.file))?));
            let name = it
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            paths.push(ByteArray::from(name.as_str()));
        }
        let labels: Vec<i64> = group.iter().map(|it| i64::from(it.label)).collect();
        let mut rg = w.next_row_group().map_err(e)?;
        for col in 0..3 {
            let mut c = rg
                .next_column()
                .map_err(e)?
                .ok_or_else(|| bad(path, "schema"))?;
            match col {
                0 | 1 => {
                    let v = if col == 0 { &images } else { &paths };
                    let defs = vec![2i16; v.len()];
                    c.typed::<ByteArrayType>()
                        .write_batch(v, Some(&defs), None)
                        .map_err(e)?;
                }
                _ => {
                    let defs = vec![1i16; labels.len()];
                    c.typed::<Int64Type>()
                        .write_batch(&labels, Some(&defs), None)
                        .map_err(e)?;
                }
            }
            c.close().map_err(e)?;
        }
        rg.close().map_err(e)?;
    }
    w.into_inner().map_err(e)
}

/// The `huggingface` metadata `datasets` writes, for an image and a ClassLabel.
fn serde_json_like(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| json_string(n)).collect();
    format!(
        "{{\"info\": {{\"features\": {{\"image\": {{\"_type\": \"Image\"}}, \"label\": \
         {{\"names\": [{}], \"_type\": \"ClassLabel\"}}}}}}}}",
        quoted.join(", ")
    )
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
