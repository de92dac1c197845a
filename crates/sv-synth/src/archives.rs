//! The synthetic ImageNet as ImageNet is downloaded: the three ILSVRC2012 archives,
//! so the tar and devkit paths of `shard build` can be tried and tested.
//!
//! ```text
//! OUT/ILSVRC2012_img_train.tar      one <wnid>.tar per class, each holding <wnid>_<i>.JPEG
//! OUT/ILSVRC2012_img_val.tar        ILSVRC2012_val_<8 digits>.JPEG, flat
//! OUT/ILSVRC2012_devkit_t12.tar.gz  ILSVRC2012_devkit_t12/data/meta.mat
//!                                   ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt
//! ```
//!
//! `meta.mat` is a MAT v5 file in the real one's layout: a struct array `synsets`
//! (`ILSVRC2012_ID`, `WNID`, `words`, `gloss`, `num_children`, `children`,
//! `wordnet_height`, `num_train_images`), the classes first with IDs 1..=C given out
//! in a seeded shuffle (as in the real devkit, ID order is not wnid order), then two
//! inner nodes. The members hold the same bytes as the files of the tree; headers carry
//! a fixed time, so the archives are byte-identical for a seed.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use sv_core::fs::AtomicFile;

use rand::seq::SliceRandom as _;
use sv_build::mat::{Field, write_struct_column};
use sv_core::ClassInfo;

use crate::SynthError;

/// File names of the three archives.
pub const TRAIN_TAR: &str = "ILSVRC2012_img_train.tar";
/// See [`TRAIN_TAR`].
pub const VAL_TAR: &str = "ILSVRC2012_img_val.tar";
/// See [`TRAIN_TAR`].
pub const DEVKIT: &str = "ILSVRC2012_devkit_t12.tar.gz";

/// The time in every member's header (2012-03-13, about when ILSVRC2012 was released).
const MTIME: u64 = 1_331_596_800;
const STREAM_IDS: u64 = 0x4944_5332;

fn io(path: &Path) -> impl Fn(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn header(size: usize) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size as u64);
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    archive: &Path,
) -> Result<(), SynthError> {
    b.append_data(&mut header(bytes.len()), name, bytes)
        .map_err(io(archive))
}

/// Write the three archives into `out_dir` from the tree `generate` wrote there.
/// `val_classes[j]` is the class of val image `j + 1`.
pub(crate) fn write(
    out_dir: &Path,
    classes: &[ClassInfo],
    per_class: u32,
    val_classes: &[u32],
    seed: u64,
) -> Result<(), SynthError> {
    write_train(out_dir, classes, per_class)?;
    write_val(out_dir, val_classes.len())?;
    write_devkit(out_dir, classes, val_classes, seed)
}

fn write_train(out_dir: &Path, classes: &[ClassInfo], per_class: u32) -> Result<(), SynthError> {
    let path = out_dir.join(TRAIN_TAR);
    let file = AtomicFile::create(&path)?;
    let mut outer = tar::Builder::new(BufWriter::new(file));
    for class in classes {
        // One class at a time in memory (its images), as a tar of its own.
        let mut inner = tar::Builder::new(Vec::new());
        for i in 1..=per_class {
            let name = format!("{}_{i}.JPEG", class.wnid);
            let src = out_dir.join("train").join(&class.wnid).join(&name);
            let bytes = std::fs::read(&src).map_err(io(&src))?;
            append(&mut inner, &name, &bytes, &path)?;
        }
        let bytes = inner.into_inner().map_err(io(&path))?;
        append(&mut outer, &format!("{}.tar", class.wnid), &bytes, &path)?;
    }
    finish(outer, &path)
}

fn write_val(out_dir: &Path, images: usize) -> Result<(), SynthError> {
    let path = out_dir.join(VAL_TAR);
    let file = AtomicFile::create(&path)?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    for j in 1..=images {
        let name = format!("{}.JPEG", crate::val_name(j as u64));
        let src = out_dir.join("val").join(&name);
        let bytes = std::fs::read(&src).map_err(io(&src))?;
        append(&mut tar, &name, &bytes, &path)?;
    }
    finish(tar, &path)
}

/// Flush an archive's writer and put the file in place (synced, renamed, folder synced).
fn commit(w: BufWriter<AtomicFile>, path: &Path) -> Result<(), SynthError> {
    let file = w.into_inner().map_err(|e| io(path)(e.into_error()))?;
    Ok(file.commit()?)
}

fn finish(b: tar::Builder<BufWriter<AtomicFile>>, path: &Path) -> Result<(), SynthError> {
    commit(b.into_inner().map_err(io(path))?, path)
}

/// The ILSVRC2012_IDs of the classes: a seeded shuffle of 1..=C.
pub fn class_ids(classes: usize, seed: u64) -> Vec<u32> {
    let mut ids: Vec<u32> = (1..=classes as u32).collect();
    ids.shuffle(&mut sv_core::stream_rng(seed, STREAM_IDS, 0));
    ids
}

/// `meta.mat`'s bytes for these classes.
pub fn meta_mat(classes: &[ClassInfo], ids: &[u32]) -> Vec<u8> {
    let fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ];
    let n = classes.len() as u32;
    let mut order: Vec<usize> = (0..classes.len()).collect();
    order.sort_by_key(|&c| ids[c]);
    let mut rows: Vec<Vec<Field>> = order
        .iter()
        .map(|&c| {
            vec![
                Field::Number(f64::from(ids[c])),
                Field::Text(classes[c].wnid.clone()),
                Field::Text(classes[c].name.clone()),
                Field::Text(format!(
                    "a synthetic class drawn by sv-synth ({})",
                    classes[c].name
                )),
                Field::Number(0.0),
                Field::Numbers(Vec::new()),
                Field::Number(0.0),
                Field::Number(1300.0),
            ]
        })
        .collect();
    // Two inner nodes, as the real file's 860: a group of every class, and the root.
    let group = f64::from(n + 1);
    rows.push(vec![
        Field::Number(group),
        Field::Text("n80000000".into()),
        Field::Text("synthetic object".into()),
        Field::Text("every synthetic class".into()),
        Field::Number(f64::from(n)),
        Field::Numbers((1..=n).map(f64::from).collect()),
        Field::Number(1.0),
        Field::Number(0.0),
    ]);
    rows.push(vec![
        Field::Number(group + 1.0),
        Field::Text("n00001740".into()),
        Field::Text("entity".into()),
        Field::Text("that which is perceived to have its own distinct existence".into()),
        Field::Number(1.0),
        Field::Numbers(vec![group]),
        Field::Number(2.0),
        Field::Number(0.0),
    ]);
    write_struct_column("synsets", &fields, &rows)
}

fn write_devkit(
    out_dir: &Path,
    classes: &[ClassInfo],
    val_classes: &[u32],
    seed: u64,
) -> Result<(), SynthError> {
    let path = out_dir.join(DEVKIT);
    let ids = class_ids(classes.len(), seed);
    let meta = meta_mat(classes, &ids);
    let mut truth = String::new();
    for &c in val_classes {
        truth.push_str(&format!("{}\n", ids[c as usize]));
    }
    let file = AtomicFile::create(&path)?;
    let gz = flate2::GzBuilder::new()
        .mtime(MTIME as u32)
        .write(BufWriter::new(file), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let data = PathBuf::from("ILSVRC2012_devkit_t12/data");
    append(
        &mut tar,
        &data.join("meta.mat").to_string_lossy(),
        &meta,
        &path,
    )?;
    append(
        &mut tar,
        &data
            .join("ILSVRC2012_validation_ground_truth.txt")
            .to_string_lossy(),
        truth.as_bytes(),
        &path,
    )?;
    let gz = tar.into_inner().map_err(io(&path))?;
    commit(gz.finish().map_err(io(&path))?, &path)
}
