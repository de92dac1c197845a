//! Parquet files as the hub writes image datasets: each row an `image` struct
//! (`bytes`, `path`) and an integer `label`, the class names in the `huggingface`
//! key-value metadata (`info.features.<label>.names`, a ClassLabel). Read with the
//! `parquet` crate's column readers (no arrow), one column chunk at a time and within
//! it one page at a time.
//!
//! Listing reads the footer, the label column and the (small) `image.path` column;
//! the build then reads the image column with one [`Cursor`] moving forward through
//! the rows. Every byte range the crate asks for is checked against the file's
//! length and against [`MAX_READ_BYTES`] before anything is allocated
//! ([`Capped`]), so a damaged or hostile footer or page header that declares gigabytes
//! is an error, not an allocation. Panics inside the crate on malformed data are
//! caught and become errors. A page that cannot be decoded makes the rest of its row
//! group's rows rejects, each naming its row; the next row group is read afresh.

use std::fs::File;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;

use parquet::basic::Type as Physical;
use parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use parquet::data_type::ByteArrayType;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{ChunkReader, FileReader, Length};
use parquet::file::serialized_reader::{SerializedFileReader, SerializedPageReader};

use super::{FileListing, HubFile, RawLabel, Sample};
use crate::BuildError;
use crate::read::{MAX_INPUT_BYTES, io_words};

/// The most bytes read at once from a parquet file: a page (one image and its
/// neighbours up to pyarrow's 1 MiB page size) or the footer.
pub const MAX_READ_BYTES: u64 = MAX_INPUT_BYTES + (64 << 20);

/// Image columns looked for, in order: a struct's `bytes` leaf, or a binary column.
const IMAGE_COLUMNS: &[&str] = &[
    "image.bytes",
    "img.bytes",
    "jpg.bytes",
    "image",
    "img",
    "jpg",
    "jpeg",
    "png",
    "webp",
];

/// A file for the parquet crate, read with positioned reads, every range checked.
#[derive(Clone)]
pub(super) struct Capped {
    file: Arc<File>,
    len: u64,
}

impl Length for Capped {
    fn len(&self) -> u64 {
        self.len
    }
}

/// The part of a file from `pos` on.
pub(super) struct At {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.end.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        #[cfg(unix)]
        let got = std::os::unix::fs::FileExt::read_at(&*self.file, &mut buf[..n], self.pos)?;
        #[cfg(windows)]
        let got = std::os::windows::fs::FileExt::seek_read(&*self.file, &mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl ChunkReader for Capped {
    type T = std::io::BufReader<At>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        if start > self.len {
            return Err(ParquetError::EOF(format!(
                "a read at byte {start}, past the end of the file ({} bytes)",
                self.len
            )));
        }
        Ok(std::io::BufReader::with_capacity(
            16 << 10,
            At {
                file: Arc::clone(&self.file),
                pos: start,
                end: self.len,
            },
        ))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        let end = start.checked_add(length as u64).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(ParquetError::EOF(format!(
                "{length} bytes at byte {start} are declared, past the end of the file ({} \
                 bytes): the file is truncated or damaged",
                self.len
            )));
        }
        if length as u64 > MAX_READ_BYTES {
            return Err(ParquetError::General(format!(
                "a page of {length} bytes is declared, more than the {} MiB read at once",
                MAX_READ_BYTES >> 20
            )));
        }
        let mut buf = vec![0u8; length];
        crate::archive::read_exact_at(&self.file, &mut buf, start)
            .map_err(|e| ParquetError::General(format!("cannot read: {}", io_words(&e))))?;
        Ok(buf.into())
    }
}

/// Run `f`, turning a panic inside the parquet crate into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(format!("{what}: the parquet reader failed on damaged data")))
}

fn open(f: &HubFile, file: Arc<File>) -> Result<SerializedFileReader<Capped>, String> {
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read its attributes: {}", io_words(&e)))?
        .len();
    if len < 12 {
        return Err(format!(
            "{len} bytes: too short for a parquet file (it is truncated)"
        ));
    }
    let _ = f;
    guarded("its footer", || {
        SerializedFileReader::new(Capped { file, len }).map_err(|e| {
            format!("not a readable parquet file (truncated, or its footer is damaged): {e}")
        })
    })
}

/// Where the columns a build needs are.
struct Columns {
    image: usize,
    image_name: String,
    label: usize,
    path: Option<usize>,
}

fn find_columns(meta: &ParquetMetaData, label_column: &str) -> Result<Columns, String> {
    let schema = meta.file_metadata().schema_descr();
    let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    let at = |name: &str| names.iter().position(|n| n == name);
    let image = IMAGE_COLUMNS
        .iter()
        .find_map(|n| at(n).filter(|&i| schema.column(i).physical_type() == Physical::BYTE_ARRAY))
        .ok_or_else(|| {
            format!(
                "no image column: it has {}, and none of {} holding bytes",
                names.join(", "),
                IMAGE_COLUMNS.join(", ")
            )
        })?;
    let label = at(label_column).ok_or_else(|| {
        format!(
            "no label column `{label_column}` (its columns: {}; --label-column names another)",
            names.join(", ")
        )
    })?;
    let t = schema.column(label).physical_type();
    if !matches!(t, Physical::INT32 | Physical::INT64) {
        return Err(format!(
            "its label column `{label_column}` holds {t}, not integers"
        ));
    }
    if schema.column(image).max_rep_level() > 0 || schema.column(label).max_rep_level() > 0 {
        return Err(
            "its image or label column is a list: one image and label per row is read".into(),
        );
    }
    let image_name = names[image].clone();
    let path = image_name
        .strip_suffix(".bytes")
        .and_then(|s| at(&format!("{s}.path")))
        .filter(|&i| schema.column(i).physical_type() == Physical::BYTE_ARRAY);
    Ok(Columns {
        image,
        image_name,
        label,
        path,
    })
}

/// The ClassLabel names the `huggingface` metadata gives for `label_column`.
fn hf_class_names(meta: &ParquetMetaData, label_column: &str) -> Option<Vec<String>> {
    let kv = meta.file_metadata().key_value_metadata()?;
    let text = kv
        .iter()
        .find(|k| k.key == "huggingface")?
        .value
        .as_deref()?;
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let features = v.pointer("/info/features").or_else(|| v.get("features"))?;
    let names = features.get(label_column)?.get("names")?.as_array()?;
    names
        .iter()
        .map(|n| n.as_str().map(str::to_string))
        .collect()
}

fn rg_range(meta: &ParquetMetaData, rg: usize) -> Result<(u64, u64), String> {
    let mut start = 0u64;
    for (i, g) in meta.row_groups().iter().enumerate() {
        let n = u64::try_from(g.num_rows())
            .map_err(|_| format!("row group {i} has {} rows", g.num_rows()))?;
        if i == rg {
            return Ok((start, n));
        }
        start += n;
    }
    Err(format!("no row group {rg}"))
}

/// A column reader over one column chunk of the file `chunk`.
fn column_reader(
    reader: &SerializedFileReader<Capped>,
    chunk: &Capped,
    rg: usize,
    column: usize,
) -> Result<ColumnReader, String> {
    let meta = reader.metadata();
    let g = meta.row_group(rg);
    let cc = g.column(column);
    let (start, len) = (cc.data_page_offset(), cc.compressed_size());
    let dict = cc.dictionary_page_offset().unwrap_or(start);
    if start < 0 || len < 0 || dict < 0 {
        return Err("its column chunk has a negative offset or size".into());
    }
    let pages = SerializedPageReader::new(
        Arc::new(chunk.clone()),
        cc,
        usize::try_from(g.num_rows()).unwrap_or(0),
        None,
    )
    .map_err(|e| e.to_string())?;
    let descr = meta.file_metadata().schema_descr().column(column);
    Ok(parquet::column::reader::get_column_reader(
        descr,
        Box::new(pages),
    ))
}

/// All of one integer or byte-array column's values in a row group, `None` for nulls.
fn read_ints(r: ColumnReader, max_def: i16, rows: usize) -> Result<Vec<Option<i64>>, String> {
    let mut out = Vec::with_capacity(rows);
    match r {
        ColumnReader::Int64ColumnReader(mut r) => {
            read_all(&mut r, rows, max_def, &mut out, |v: i64| v)?
        }
        ColumnReader::Int32ColumnReader(mut r) => {
            read_all(&mut r, rows, max_def, &mut out, i64::from)?
        }
        _ => return Err("the label column does not hold integers".into()),
    }
    Ok(out)
}

fn read_strings(r: ColumnReader, max_def: i16, rows: usize) -> Result<Vec<Option<String>>, String> {
    let mut out = Vec::with_capacity(rows);
    match r {
        ColumnReader::ByteArrayColumnReader(mut r) => read_all(
            &mut r,
            rows,
            max_def,
            &mut out,
            |v: parquet::data_type::ByteArray| String::from_utf8_lossy(v.data()).into_owned(),
        )?,
        _ => return Err("the path column does not hold text".into()),
    }
    Ok(out)
}

/// The definition level of a present value in `column`.
fn max_def(reader: &SerializedFileReader<Capped>, column: usize) -> i16 {
    reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .column(column)
        .max_def_level()
}

fn read_all<T: parquet::data_type::DataType, U>(
    r: &mut ColumnReaderImpl<T>,
    rows: usize,
    max_def: i16,
    out: &mut Vec<Option<U>>,
    map: impl Fn(T::T) -> U,
) -> Result<(), String>
where
    T::T: Clone,
{
    let mut defs = Vec::new();
    let mut values = Vec::new();
    while out.len() < rows {
        defs.clear();
        values.clear();
        let want = (rows - out.len()).min(4096);
        let (records, _, _) = r
            .read_records(want, Some(&mut defs), None, &mut values)
            .map_err(|e| e.to_string())?;
        if records == 0 {
            return Err(format!(
                "the column ends after {} of its {rows} rows",
                out.len()
            ));
        }
        let mut vals = values.drain(..);
        for i in 0..records {
            let present = max_def == 0 || defs.get(i).copied() == Some(max_def);
            out.push(if present { vals.next().map(&map) } else { None });
        }
    }
    Ok(())
}

/// List `f`'s rows.
pub(super) fn list(f: &HubFile, label_column: Option<&str>) -> Result<FileListing, BuildError> {
    let bad = |what: String| BuildError::Input(format!("{}: {what}", f.path.display()));
    let (file, len) = crate::read::open_regular(&f.path).map_err(bad)?;
    let file = Arc::new(file);
    let chunk = Capped {
        file: Arc::clone(&file),
        len,
    };
    let reader = open(f, file).map_err(bad)?;
    let label_column = label_column.unwrap_or(super::DEFAULT_LABEL_COLUMN);
    let meta = reader.metadata();
    let cols = find_columns(meta, label_column).map_err(bad)?;
    let mut out = FileListing {
        samples: Vec::new(),
        rejects: Vec::new(),
        ignored: Vec::new(),
        class_names: hf_class_names(meta, label_column),
        image_column: Some(cols.image_name.clone()),
    };
    // A codec this build does not read is one error for the file, not a reject per row.
    for (rg, g) in meta.row_groups().iter().enumerate() {
        for c in [cols.image, cols.label] {
            use parquet::basic::Compression as C;
            let codec = g.column(c).compression();
            if !matches!(codec, C::UNCOMPRESSED | C::SNAPPY | C::ZSTD(_)) {
                return Err(bad(format!(
                    "row group {rg}: column {} is compressed with {codec}, which this build \
                     does not read (snappy, zstd or none)",
                    g.column(c).column_path()
                )));
            }
        }
    }
    let mut first = 0u64;
    for rg in 0..meta.num_row_groups() {
        let g = meta.row_group(rg);
        let rows = usize::try_from(g.num_rows())
            .map_err(|_| bad(format!("row group {rg} has {} rows", g.num_rows())))?;
        let estimate = u64::try_from(g.column(cols.image).uncompressed_size())
            .unwrap_or(0)
            .checked_div(rows as u64)
            .unwrap_or(0);
        let labels = guarded("its label column", || {
            read_ints(
                column_reader(&reader, &chunk, rg, cols.label)?,
                max_def(&reader, cols.label),
                rows,
            )
        });
        let paths = match cols.path {
            Some(p) => guarded("its path column", || {
                read_strings(
                    column_reader(&reader, &chunk, rg, p)?,
                    max_def(&reader, p),
                    rows,
                )
            })
            .unwrap_or_default(),
            None => Vec::new(),
        };
        let labels = match labels {
            Ok(l) => l,
            Err(why) => {
                for row in first..first + rows as u64 {
                    out.rejects.push((
                        format!("row {row}"),
                        format!("row group {rg}'s label column cannot be read: {why}"),
                    ));
                }
                first += rows as u64;
                continue;
            }
        };
        for (i, label) in labels.into_iter().enumerate() {
            let row = first + i as u64;
            let shown = match paths.get(i).cloned().flatten() {
                Some(p) if !p.is_empty() => format!("row {row} ({p})"),
                _ => format!("row {row}"),
            };
            match label {
                Some(l) => out.samples.push(Sample {
                    path: PathBuf::from(row.to_string()),
                    shown,
                    label: RawLabel::Index(l),
                    size: estimate,
                    offset: row,
                }),
                None => out.rejects.push((shown, "its label is null".into())),
            }
        }
        first += rows as u64;
    }
    Ok(out)
}

/// Reads a file's image column forward, row by row.
pub(super) struct Cursor {
    /// The file's place in the build's list.
    pub file: usize,
    chunk: Capped,
    reader: SerializedFileReader<Capped>,
    column: usize,
    /// Current row group, its first row and row count.
    rg: usize,
    rg_first: u64,
    rg_rows: u64,
    /// The row the column reader is at.
    next: u64,
    values: Option<ColumnReaderImpl<ByteArrayType>>,
    /// Why the current row group cannot be read further.
    broken: Option<String>,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cursor(file {}, row {})", self.file, self.next)
    }
}

impl Cursor {
    pub fn open(at: usize, f: &HubFile, file: Arc<File>, column: &str) -> Result<Cursor, String> {
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {}", f.path.display(), io_words(&e)))?
            .len();
        let chunk = Capped {
            file: Arc::clone(&file),
            len,
        };
        let reader = open(f, file).map_err(|e| format!("{}: {e}", f.path.display()))?;
        let schema = reader.metadata().file_metadata().schema_descr();
        let column = schema
            .columns()
            .iter()
            .position(|c| c.path().string() == column)
            .ok_or_else(|| {
                format!(
                    "{}: no column {column} (the file changed since it was listed)",
                    f.path.display()
                )
            })?;
        Ok(Cursor {
            file: at,
            chunk,
            reader,
            column,
            rg: usize::MAX,
            rg_first: 0,
            rg_rows: 0,
            next: 0,
            values: None,
            broken: None,
        })
    }

    /// Put the cursor at `row`: its row group, and that group's reader skipped to it.
    fn seek(&mut self, row: u64) -> Result<(), String> {
        let meta = self.reader.metadata();
        let mut first = 0u64;
        let mut found = None;
        for rg in 0..meta.num_row_groups() {
            let (start, n) = rg_range(meta, rg)?;
            if (start..start + n).contains(&row) {
                found = Some((rg, start, n));
                break;
            }
            first = start + n;
        }
        let (rg, start, n) = found.ok_or_else(|| {
            format!(
                "row {row} is past the file's {first} rows (the file changed since it was listed)"
            )
        })?;
        self.rg = rg;
        self.rg_first = start;
        self.rg_rows = n;
        self.broken = None;
        self.values = None;
        let (reader, chunk, column) = (&self.reader, &self.chunk, self.column);
        let made = guarded("the image column", || {
            match column_reader(reader, chunk, rg, column)? {
                ColumnReader::ByteArrayColumnReader(mut r) => {
                    let skip = (row - start) as usize;
                    let skipped = r.skip_records(skip).map_err(|e| e.to_string())?;
                    if skipped != skip {
                        return Err(format!("the column ends after {skipped} rows"));
                    }
                    Ok(r)
                }
                _ => Err("the image column does not hold bytes".into()),
            }
        });
        match made {
            Ok(r) => {
                self.values = Some(r);
                self.next = row;
                Ok(())
            }
            Err(why) => {
                let why = format!("row group {rg} cannot be read: {why}");
                self.broken = Some(why.clone());
                self.next = row + 1;
                Err(why)
            }
        }
    }

    /// The image bytes of `row`; `Err` is the reject reason.
    pub fn read_row(&mut self, row: u64) -> Result<Vec<u8>, String> {
        let in_group =
            self.rg != usize::MAX && (self.rg_first..self.rg_first + self.rg_rows).contains(&row);
        if in_group && self.broken.is_some() && row >= self.next.saturating_sub(1) {
            self.next = row + 1;
            return Err(self.broken.clone().unwrap_or_default());
        }
        if !in_group || row != self.next || self.values.is_none() {
            self.seek(row)?;
        }
        let max_def = max_def(&self.reader, self.column);
        let (Some(values), chunk) = (self.values.as_mut(), &self.chunk) else {
            return Err("internal error: no column reader".into());
        };
        let _ = chunk;
        let got = guarded("the image column", || {
            let mut defs = Vec::new();
            let mut vals = Vec::new();
            let (records, _, _) = values
                .read_records(1, Some(&mut defs), None, &mut vals)
                .map_err(|e| e.to_string())?;
            if records != 1 {
                return Err("the column ends early".into());
            }
            let present = max_def == 0 || defs.first().copied() == Some(max_def);
            Ok(present.then(|| vals.pop()).flatten())
        });
        self.next = row + 1;
        match got {
            Ok(Some(v)) => {
                if v.len() as u64 > MAX_INPUT_BYTES {
                    return Err(format!(
                        "its image is {} bytes, more than the {} MiB read for one image",
                        v.len(),
                        MAX_INPUT_BYTES >> 20
                    ));
                }
                Ok(v.data().to_vec())
            }
            Ok(None) => Err("its image is null".into()),
            Err(why) => {
                let why = format!(
                    "row group {} cannot be read from row {row} on: {why}",
                    self.rg
                );
                self.broken = Some(why.clone());
                self.values = None;
                Err(why)
            }
        }
    }
}
