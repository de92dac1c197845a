//! A reader (and a small writer) for the part of MATLAB's MAT-file level 5 format
//! that ImageNet's devkit uses: numeric, char, struct and cell arrays, stored plain or
//! zlib-compressed (`miCOMPRESSED`, as MATLAB's `-v7` saves).
//!
//! Written here rather than taken from a crate: the maintained Rust MAT crates either
//! bind the C library matio (a native build with HDF5) or, in pure Rust, parse with
//! `unwrap`s on file data, which a build must not do on a downloaded file. This one
//! checks every length against what is left before it reads, limits nesting depth and
//! the memory the whole file may take once decoded ([`MAX_DECODED`]: inflated data,
//! numbers at 8 bytes each as `f64`, every array counted), and says what is wrong and
//! where. It is checked against files
//! written by `scipy.io.savemat` (`tools/fixtures/devkit.py`).
//!
//! Layout (MathWorks, "MAT-File Format", level 5): a 128-byte header (text, subsystem
//! offset, version 0x0100, endian mark `IM` for little-endian), then data elements.
//! An element is a tag (`u32` type, `u32` byte count, or the "small" form: count in
//! the high 16 bits and up to 4 bytes of data in the tag's second word) and its data,
//! padded to 8 bytes. A variable is a `miMATRIX` element holding: array flags (class),
//! dimensions, name, then the class's data: the real part for numbers, the characters
//! for `mxCHAR`, the field-name length, field names and one `miMATRIX` per element and
//! field (column-major) for `mxSTRUCT`, one `miMATRIX` per element for `mxCELL`.

use std::cell::Cell;
use std::io::Read;

/// The most nested arrays read (struct in struct ...).
const MAX_DEPTH: usize = 32;
/// The most memory a file may take to decode, all variables together: compressed
/// data inflated, every array's own size, numbers at 8 bytes each (they are stored as
/// small as 1 byte and decoded to `f64`), text. ILSVRC2012's meta.mat (1,860 synsets
/// of 8 fields) decodes to a few MiB, so this is many times what a devkit needs while
/// a small hostile file cannot make a build take gigabytes.
pub const MAX_DECODED: u64 = 64 << 20;

/// What is left of [`MAX_DECODED`] while a file is read.
struct Budget(Cell<u64>);

impl Budget {
    /// Account for `n` more bytes, before they are allocated.
    fn spend(&self, n: u64, at: usize) -> Result<(), String> {
        let left = self.0.get();
        if n > left {
            return Err(format!(
                "byte {at}: decoding this file takes more than {} MiB of memory (inflated \
                 data, arrays, and numbers at 8 bytes each), the most a devkit's meta.mat \
                 is given; ILSVRC2012's needs a few MiB, so this file is damaged or not a \
                 devkit's",
                MAX_DECODED >> 20
            ));
        }
        self.0.set(left - n);
        Ok(())
    }
}

/// Memory one decoded array takes besides its contents.
const VALUE_BYTES: u64 = std::mem::size_of::<Value>() as u64;

/// A MATLAB array.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A numeric or logical array, converted to `f64`, column-major.
    Numeric {
        /// Dimensions.
        dims: Vec<usize>,
        /// The values.
        data: Vec<f64>,
    },
    /// A char array, as text (rows joined as stored, column-major for 2-D).
    Char {
        /// Dimensions.
        dims: Vec<usize>,
        /// The characters.
        text: String,
    },
    /// A struct array: `elems[i][f]` is field `fields[f]` of element `i`.
    Struct {
        /// Dimensions.
        dims: Vec<usize>,
        /// Field names.
        fields: Vec<String>,
        /// One row of field values per element, column-major.
        elems: Vec<Vec<Value>>,
    },
    /// A cell array, column-major.
    Cell {
        /// Dimensions.
        dims: Vec<usize>,
        /// The cells.
        elems: Vec<Value>,
    },
    /// A class this reader does not decode (objects, sparse, function handles).
    Unsupported {
        /// MATLAB's class number.
        class: u8,
    },
}

impl Value {
    /// A scalar's value.
    pub fn scalar(&self) -> Option<f64> {
        match self {
            Value::Numeric { data, .. } if data.len() == 1 => Some(data[0]),
            _ => None,
        }
    }

    /// A char array's text.
    pub fn text(&self) -> Option<&str> {
        match self {
            Value::Char { text, .. } => Some(text),
            _ => None,
        }
    }

    /// A numeric array's values.
    pub fn numbers(&self) -> Option<&[f64]> {
        match self {
            Value::Numeric { data, .. } => Some(data),
            _ => None,
        }
    }
}

/// A named variable of a MAT file.
#[derive(Clone, Debug, PartialEq)]
pub struct Variable {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: Value,
}

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;
const MX_DOUBLE: u8 = 6;
const MX_UINT64: u8 = 15;
const COMPLEX: u32 = 0x0800;

/// Read every variable of a little- or big-endian level 5 MAT file. `Err` says what
/// is wrong and at which byte.
pub fn read(bytes: &[u8]) -> Result<Vec<Variable>, String> {
    if bytes.len() < 128 {
        return Err(format!(
            "{} bytes: too short for a MAT file's 128-byte header",
            bytes.len()
        ));
    }
    if bytes.starts_with(b"\x89HDF") || bytes[..116].windows(8).any(|w| w == b"MATLAB 7") {
        // -v7.3 files are HDF5 containers, not level 5.
        if bytes[..128].windows(3).any(|w| w == b"7.3") {
            return Err("a MATLAB 7.3 (HDF5) MAT file; only level 5 files are read".into());
        }
    }
    let big = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        _ => return Err("not a level 5 MAT file (no endian mark at byte 126)".into()),
    };
    let budget = Budget(Cell::new(MAX_DECODED));
    let mut r = Reader {
        b: bytes,
        at: 128,
        big,
        base: 0,
        budget: &budget,
    };
    let mut vars = Vec::new();
    while r.at < bytes.len() {
        if bytes.len() - r.at < 8 {
            break; // trailing padding
        }
        let start = r.at;
        let (ty, data) = r.element()?;
        match ty {
            MI_MATRIX => vars.push(matrix(&mut r.sub(data, start), 0)?),
            MI_COMPRESSED => {
                let mut inflated = Vec::new();
                let left = budget.0.get();
                flate2::read::ZlibDecoder::new(data)
                    .take(left + 1)
                    .read_to_end(&mut inflated)
                    .map_err(|e| format!("byte {start}: compressed variable: {e}"))?;
                budget.spend(inflated.len() as u64, start)?;
                let mut inner = Reader {
                    b: &inflated,
                    at: 0,
                    big,
                    base: 0,
                    budget: &budget,
                };
                let (ity, idata) = inner.element()?;
                if ity != MI_MATRIX {
                    return Err(format!(
                        "byte {start}: a compressed element holds type {ity}, not a matrix"
                    ));
                }
                vars.push(matrix(&mut inner.sub(idata, 0), 0)?);
            }
            _ => {} // other top-level elements carry nothing a variable needs
        }
    }
    Ok(vars)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
    big: bool,
    /// Offset of `b` in the element it came from, for messages.
    base: usize,
    /// The file's memory budget, shared by every reader of it.
    budget: &'a Budget,
}

impl<'a> Reader<'a> {
    fn sub(&self, data: &'a [u8], base: usize) -> Reader<'a> {
        Reader {
            b: data,
            at: 0,
            big: self.big,
            base: base + 8,
            budget: self.budget,
        }
    }

    fn u32_at(&self, at: usize) -> u32 {
        let w = [self.b[at], self.b[at + 1], self.b[at + 2], self.b[at + 3]];
        if self.big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        }
    }

    /// The next element: (type, data); moves past its padding.
    fn element(&mut self) -> Result<(u32, &'a [u8]), String> {
        let at = self.at;
        if self.b.len() - at < 8 {
            return Err(format!(
                "byte {}: an element tag needs 8 bytes, {} are left",
                self.base + at,
                self.b.len() - at
            ));
        }
        let first = self.u32_at(at);
        if first >> 16 != 0 {
            // Small element: count in the high half, data in the second word.
            let (ty, n) = (first & 0xffff, (first >> 16) as usize);
            if n > 4 {
                return Err(format!(
                    "byte {}: a small element claims {n} bytes (at most 4)",
                    self.base + at
                ));
            }
            self.at += 8;
            return Ok((ty, &self.b[at + 4..at + 4 + n]));
        }
        let n = self.u32_at(at + 4) as usize;
        let left = self.b.len() - at - 8;
        if n > left {
            return Err(format!(
                "byte {}: an element claims {n} bytes but {left} are left (truncated file?)",
                self.base + at
            ));
        }
        let data = &self.b[at + 8..at + 8 + n];
        // Compressed elements are not padded; the others are, to 8 bytes.
        let padded = if first == MI_COMPRESSED {
            n
        } else {
            n.div_ceil(8) * 8
        };
        self.at = (at + 8 + padded).min(self.b.len());
        Ok((first, data))
    }

    fn expect(&mut self, what: &str) -> Result<(u32, &'a [u8]), String> {
        if self.at >= self.b.len() {
            return Err(format!(
                "byte {}: the matrix ends before its {what}",
                self.base + self.at
            ));
        }
        self.element()
    }
}

/// Decode a `miMATRIX` element's data.
fn matrix(r: &mut Reader<'_>, depth: usize) -> Result<Variable, String> {
    if depth > MAX_DEPTH {
        return Err(format!("arrays nested more than {MAX_DEPTH} deep"));
    }
    r.budget.spend(VALUE_BYTES, r.base)?;
    if r.b.is_empty() {
        // An empty matrix element: MATLAB's [] (as for an empty struct field).
        return Ok(Variable {
            name: String::new(),
            value: Value::Numeric {
                dims: vec![0, 0],
                data: Vec::new(),
            },
        });
    }
    let at = r.base;
    let (ty, flags) = r.expect("array flags")?;
    if ty != MI_UINT32 || flags.len() < 8 {
        return Err(format!("byte {at}: array flags are not two uint32 words"));
    }
    let flags = Reader { b: flags, ..*r }.u32_at(0);
    let class = (flags & 0xff) as u8;
    let (ty, dims) = r.expect("dimensions")?;
    let dims: Vec<usize> = ints(ty, dims, r.big)
        .ok_or_else(|| format!("byte {at}: dimensions are not int32"))?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("byte {at}: a negative dimension")))
        .collect::<Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= r.b.len().saturating_mul(8) + 1)
        .ok_or_else(|| format!("byte {at}: dimensions {dims:?} are larger than the file"))?;
    r.budget.spend(dims.len() as u64 * 8, at)?;
    let (_, name) = r.expect("name")?;
    r.budget.spend(name.len() as u64, at)?;
    let name = String::from_utf8_lossy(name).into_owned();
    let value = match class {
        MX_CHAR => {
            let (ty, data) = r.expect("characters")?;
            // UTF-16 to UTF-8 takes at most 3 bytes for 2, UTF-32 at most 4 for 4
            r.budget.spend(data.len() as u64 * 3 / 2 + 4, at)?;
            Value::Char {
                text: chars(ty, data, r.big)
                    .ok_or_else(|| format!("byte {at}: characters of type {ty}"))?,
                dims,
            }
        }
        MX_DOUBLE..=MX_UINT64 => {
            let (ty, data) = r.expect("values")?;
            let width = width(ty).ok_or_else(|| format!("byte {at}: values of type {ty}"))?;
            r.budget.spend((data.len() / width) as u64 * 8, at)?;
            let data = numbers(ty, data, r.big)
                .ok_or_else(|| format!("byte {at}: values of type {ty}"))?;
            if data.len() != count {
                return Err(format!(
                    "byte {at}: {} values for dimensions {dims:?}",
                    data.len()
                ));
            }
            if flags & COMPLEX != 0 {
                r.expect("imaginary part")?;
            }
            Value::Numeric { dims, data }
        }
        MX_STRUCT => {
            let (ty, len) = r.expect("field name length")?;
            let len = ints(ty, len, r.big)
                .and_then(|v| v.first().copied())
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("byte {at}: a bad field name length"))?;
            let (_, names) = r.expect("field names")?;
            if names.len() % len != 0 {
                return Err(format!(
                    "byte {at}: {} bytes of field names are not a multiple of {len}",
                    names.len()
                ));
            }
            r.budget.spend(names.len() as u64, at)?;
            let fields: Vec<String> = names
                .chunks(len)
                .map(|c| {
                    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                    String::from_utf8_lossy(&c[..end]).into_owned()
                })
                .collect();
            let row_bytes = std::mem::size_of::<Vec<Value>>() as u64;
            r.budget
                .spend((count as u64).saturating_mul(row_bytes), at)?;
            let mut elems = Vec::with_capacity(count);
            for _ in 0..count {
                let mut row = Vec::with_capacity(fields.len());
                for f in &fields {
                    row.push(sub_matrix(r, depth, &format!("field {f}"))?);
                }
                elems.push(row);
            }
            Value::Struct {
                dims,
                fields,
                elems,
            }
        }
        MX_CELL => {
            let mut elems = Vec::with_capacity(count.min(1 << 16));
            for i in 0..count {
                elems.push(sub_matrix(r, depth, &format!("cell {i}"))?);
            }
            Value::Cell { dims, elems }
        }
        _ => Value::Unsupported { class },
    };
    Ok(Variable { name, value })
}

fn sub_matrix(r: &mut Reader<'_>, depth: usize, what: &str) -> Result<Value, String> {
    let start = r.base + r.at;
    let (ty, data) = r.expect(what)?;
    if ty != MI_MATRIX {
        return Err(format!("byte {start}: {what} is type {ty}, not a matrix"));
    }
    let mut inner = r.sub(data, start);
    Ok(matrix(&mut inner, depth + 1)
        .map_err(|e| format!("{what}: {e}"))?
        .value)
}

fn ints(ty: u32, b: &[u8], big: bool) -> Option<Vec<i64>> {
    numbers(ty, b, big).map(|v| v.into_iter().map(|x| x as i64).collect())
}

/// Bytes per value of a numeric storage type.
fn width(ty: u32) -> Option<usize> {
    Some(match ty {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => return None,
    })
}

/// Values of any numeric storage type (MATLAB stores a double array in the smallest
/// type that holds its values).
fn numbers(ty: u32, b: &[u8], big: bool) -> Option<Vec<f64>> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            b.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().unwrap_or([0; $n]);
                    (if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }) as f64
                })
                .collect()
        };
    }
    Some(match ty {
        MI_INT8 => b.iter().map(|&x| f64::from(x as i8)).collect(),
        MI_UINT8 => b.iter().map(|&x| f64::from(x)).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        _ => return None,
    })
}

fn chars(ty: u32, b: &[u8], big: bool) -> Option<String> {
    let units = |n: usize| -> Vec<u32> {
        b.chunks_exact(n)
            .map(|c| {
                let mut v = 0u32;
                for (i, &x) in c.iter().enumerate() {
                    let shift = if big { 8 * (n - 1 - i) } else { 8 * i };
                    v |= u32::from(x) << shift;
                }
                v
            })
            .collect()
    };
    Some(match ty {
        MI_UTF8 | MI_UINT8 | MI_INT8 => String::from_utf8_lossy(b).into_owned(),
        MI_UTF16 | MI_UINT16 => {
            let u: Vec<u16> = units(2).into_iter().map(|v| v as u16).collect();
            String::from_utf16_lossy(&u)
        }
        MI_UTF32 | MI_UINT32 => units(4)
            .into_iter()
            .map(|v| char::from_u32(v).unwrap_or('\u{fffd}'))
            .collect(),
        _ => return None,
    })
}

/// Write `name` as a column struct array (`n x 1`, one element per row of `rows`)
/// with the given fields, uncompressed, little-endian. A field value is a number
/// (`f64` scalar), text (a `1 x n` char row), or a numeric row.
pub fn write_struct_column(name: &str, fields: &[&str], rows: &[Vec<Field>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut header = b"MATLAB 5.0 MAT-file, written by SuperVision".to_vec();
    header.resize(116, b' ');
    out.extend_from_slice(&header);
    out.extend_from_slice(&[0u8; 8]); // no subsystem data
    out.extend_from_slice(&0x0100u16.to_le_bytes());
    out.extend_from_slice(b"IM");
    let mut body = Vec::new();
    array_head(&mut body, MX_STRUCT, &[rows.len(), 1], name);
    let len = fields.iter().map(|f| f.len() + 1).max().unwrap_or(1).max(8);
    element(&mut body, MI_INT32, &(len as i32).to_le_bytes());
    let mut names = Vec::new();
    for f in fields {
        let mut n = f.as_bytes().to_vec();
        n.resize(len, 0);
        names.extend_from_slice(&n);
    }
    element(&mut body, MI_INT8, &names);
    for row in rows {
        for v in row {
            let mut m = Vec::new();
            match v {
                Field::Number(x) => {
                    array_head(&mut m, MX_DOUBLE, &[1, 1], "");
                    element(&mut m, MI_DOUBLE, &x.to_le_bytes());
                }
                Field::Numbers(xs) => {
                    array_head(&mut m, MX_DOUBLE, &[1, xs.len()], "");
                    let b: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
                    element(&mut m, MI_DOUBLE, &b);
                }
                Field::Text(t) => {
                    let units: Vec<u16> = t.encode_utf16().collect();
                    array_head(&mut m, MX_CHAR, &[1, units.len()], "");
                    let b: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
                    element(&mut m, MI_UINT16, &b);
                }
            }
            element(&mut body, MI_MATRIX, &m);
        }
    }
    element(&mut out, MI_MATRIX, &body);
    out
}

/// A field value for [`write_struct_column`].
#[derive(Clone, Debug, PartialEq)]
pub enum Field {
    /// A double scalar.
    Number(f64),
    /// A double row vector (may be empty).
    Numbers(Vec<f64>),
    /// A char row.
    Text(String),
}

fn array_head(out: &mut Vec<u8>, class: u8, dims: &[usize], name: &str) {
    let mut flags = u32::from(class).to_le_bytes().to_vec();
    flags.extend_from_slice(&[0; 4]);
    element(out, MI_UINT32, &flags);
    let d: Vec<u8> = dims
        .iter()
        .flat_map(|&x| (x as i32).to_le_bytes())
        .collect();
    element(out, MI_INT32, &d);
    element(out, MI_INT8, name.as_bytes());
}

fn element(out: &mut Vec<u8>, ty: u32, data: &[u8]) {
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(8) * 8, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        write_struct_column(
            "synsets",
            &["ILSVRC2012_ID", "WNID", "words", "children"],
            &[
                vec![
                    Field::Number(1.0),
                    Field::Text("n02119789".into()),
                    Field::Text("kit fox, Grü".into()),
                    Field::Numbers(vec![]),
                ],
                vec![
                    Field::Number(2.0),
                    Field::Text("n00001740".into()),
                    Field::Text("entity".into()),
                    Field::Numbers(vec![1.0, 3.0]),
                ],
            ],
        )
    }

    #[test]
    fn writes_what_it_reads() {
        let vars = read(&sample()).unwrap();
        assert_eq!(vars.len(), 1);
        assert_eq!(vars[0].name, "synsets");
        let Value::Struct {
            dims,
            fields,
            elems,
        } = &vars[0].value
        else {
            panic!("{:?}", vars[0].value)
        };
        assert_eq!(dims, &[2, 1]);
        assert_eq!(fields, &["ILSVRC2012_ID", "WNID", "words", "children"]);
        assert_eq!(elems[0][2].text(), Some("kit fox, Grü"));
        assert_eq!(elems[1][0].scalar(), Some(2.0));
        assert_eq!(elems[1][3].numbers(), Some(&[1.0, 3.0][..]));
        assert_eq!(elems[0][3].numbers(), Some(&[][..]));
    }

    fn file(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut out = write_struct_column("x", &["a"], &[]);
        out.truncate(128);
        for e in elements {
            out.extend_from_slice(e);
        }
        out
    }

    /// A variable `name` of class double with `n` values stored as uint8 (as MATLAB
    /// stores small whole numbers), or of class char with `n` UTF-8 bytes.
    fn var(name: &str, class: u8, n: usize) -> Vec<u8> {
        let mut m = Vec::new();
        array_head(&mut m, class, &[1, n], name);
        let ty = if class == MX_CHAR { MI_UTF8 } else { MI_UINT8 };
        element(&mut m, ty, &vec![b'a'; n]);
        let mut v = Vec::new();
        element(&mut v, MI_MATRIX, &m);
        v
    }

    fn compressed(var: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(var).unwrap();
        let c = z.finish().unwrap();
        let mut out = MI_COMPRESSED.to_le_bytes().to_vec();
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
        out.extend_from_slice(&c);
        out
    }

    /// Issue 26, item 2: the memory a file takes to decode is capped in all, not per
    /// variable: many compressed variables, numbers stored 1 byte each and decoded to
    /// 8, compressed or not.
    #[test]
    fn decoding_is_capped_in_total_and_says_so() {
        let cap = format!("{} MiB", MAX_DECODED >> 20);
        let n = (MAX_DECODED / 8) as usize + 4096;
        // one variable whose numbers expand 8x past the cap: small, and compressed
        let one = file(&[compressed(&var("ids", MX_DOUBLE, n))]);
        assert!(one.len() < 200_000, "{}", one.len());
        let err = read(&one).unwrap_err();
        assert!(err.contains(&cap) && err.contains("8 bytes"), "{err}");
        // the same stored plainly
        let err = read(&file(&[var("ids", MX_DOUBLE, n)])).unwrap_err();
        assert!(err.contains(&cap), "{err}");
        // many variables, each well under the cap, past it together
        let each = (MAX_DECODED / 6) as usize;
        let many: Vec<Vec<u8>> = (0..8)
            .map(|i| compressed(&var(&format!("v{i}"), MX_CHAR, each)))
            .collect();
        let err = read(&file(&many)).unwrap_err();
        assert!(err.contains(&cap), "{err}");
        // one of them alone reads
        let vars = read(&file(&many[..1])).unwrap();
        assert_eq!(vars[0].value.text().map(str::len), Some(each));
    }

    /// ILSVRC2012's meta.mat has 1,860 synsets: one of that shape, with longer text
    /// than the real one, reads well inside the cap.
    #[test]
    fn a_devkit_sized_file_reads_inside_the_cap() {
        let rows: Vec<Vec<Field>> = (0..1860)
            .map(|i| {
                vec![
                    Field::Number(f64::from(i + 1)),
                    Field::Text(format!("n{i:08}")),
                    Field::Text("a long name, with synonyms, ".repeat(4)),
                    Field::Text("a gloss that explains the synset at length; ".repeat(8)),
                    Field::Number(0.0),
                    Field::Numbers((0..40).map(f64::from).collect()),
                    Field::Number(0.0),
                    Field::Number(1300.0),
                ]
            })
            .collect();
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
        let b = write_struct_column("synsets", &fields, &rows);
        let vars = read(&b).unwrap();
        let Value::Struct { elems, .. } = &vars[0].value else {
            panic!()
        };
        assert_eq!(elems.len(), 1860);
        assert!((b.len() as u64) * 4 < MAX_DECODED, "{}", b.len());
    }

    #[test]
    fn every_truncation_and_flipped_length_is_an_error_not_a_panic() {
        let b = sample();
        for cut in (0..b.len()).step_by(3) {
            let _ = read(&b[..cut]);
        }
        for at in 128..b.len() {
            let mut d = b.clone();
            d[at] ^= 0xa5;
            let _ = read(&d);
        }
        assert!(read(&b[..100]).unwrap_err().contains("128-byte header"));
        let err = read(&b[..b.len() - 20]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }
}
