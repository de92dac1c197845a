//! The per-pixel mean image and its `.npy` file.
//!
//! The file is numpy format version 1.0, dtype `<f4` (little-endian float32), C
//! order, shape `(3, side, side)`: channel-major (CHW) as Caffe's mean image, RGB
//! channel order, values on the 0-255 pixel scale. The header is laid out exactly as
//! `numpy.save` lays it out (dictionary keys sorted, growth padding, data aligned to
//! 64 bytes), so the bytes equal those of `numpy.save(path, mean.astype('<f4'))`.
//! [`MeanImage::load_npy`] also reads `<f8` and format versions 2.0 and 3.0.

use std::path::Path;

use crate::StatsError;
use crate::accum::Accumulator;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// numpy aligns the start of the data to this many bytes.
const ARRAY_ALIGN: usize = 64;
/// numpy leaves room for the first axis to grow to this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
/// The largest `.npy` read: `<f8` values of the largest side a shard may have
/// (16384), plus room for the header.
const MAX_NPY_BYTES: u64 = 3 * 16384 * 16384 * 8 + (1 << 20);

/// A mean image: `3 x side x side` values in CHW order, RGB, 0-255 scale.
#[derive(Clone, Debug, PartialEq)]
pub struct MeanImage {
    /// Width and height.
    pub side: u32,
    /// `data[c * side * side + y * side + x]`.
    pub data: Vec<f32>,
}

impl MeanImage {
    /// The mean of every image added to `acc`; `None` when it holds none.
    pub fn from_accumulator(acc: &Accumulator) -> Option<MeanImage> {
        let data = acc.mean_image_chw()?;
        Some(MeanImage {
            side: acc.side(),
            data: data.into_iter().map(|v| v as f32).collect(),
        })
    }

    fn plane(&self) -> usize {
        self.side as usize * self.side as usize
    }

    /// Channel `c`'s plane, `side x side`, row-major.
    pub fn channel(&self, c: usize) -> &[f32] {
        let p = self.plane();
        &self.data[(c * p).min(self.data.len())..((c + 1) * p).min(self.data.len())]
    }

    /// The same values in HWC order (`side x side x 3`), as the stored images.
    pub fn to_hwc(&self) -> Vec<f32> {
        let p = self.plane();
        (0..p * 3).map(|i| self.data[(i % 3) * p + i / 3]).collect()
    }

    /// The `.npy` file's bytes.
    pub fn to_npy_bytes(&self) -> Vec<u8> {
        let shape = format!("(3, {s}, {s})", s = self.side);
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        // numpy pads for the first axis ("3", one digit) to grow in place.
        header.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS - 1));
        let hlen = header.len() + 1; // the final newline
        let pad = ARRAY_ALIGN - (MAGIC.len() + 2 + 2 + hlen) % ARRAY_ALIGN;
        let total_header = hlen + pad;
        let mut out = Vec::with_capacity(10 + total_header + self.data.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        // The side is bounded by the accumulator, so the header is far below 64 KiB.
        out.extend_from_slice(&(total_header as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.resize(out.len() + pad, b' ');
        out.push(b'\n');
        for v in &self.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Write the `.npy` file atomically.
    pub fn save_npy(&self, path: &Path) -> Result<(), StatsError> {
        crate::write_atomic(path, &self.to_npy_bytes())
    }

    /// Read a mean image `.npy`: shape `(3, side, side)`, `<f4` or `<f8`, C order,
    /// every value a finite 0-255 pixel mean.
    pub fn load_npy(path: impl AsRef<Path>) -> Result<MeanImage, StatsError> {
        let path = path.as_ref();
        let bytes = crate::read_file(path, MAX_NPY_BYTES)?;
        Self::from_npy_bytes(&bytes).map_err(|what| StatsError::format(path, what))
    }

    /// Parse `.npy` bytes; the error says what is wrong.
    pub fn from_npy_bytes(bytes: &[u8]) -> Result<MeanImage, String> {
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err("not a .npy file (bad magic)".into());
        }
        let (major, minor) = (bytes[6], bytes[7]);
        let (hlen, start): (usize, usize) = match major {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            _ => {
                return Err(format!(
                    ".npy format version {major}.{minor} is not supported"
                ));
            }
        };
        let header = bytes
            .get(start..start.saturating_add(hlen))
            .ok_or_else(|| format!("header of {hlen} bytes runs past the end of the file"))?;
        let header = std::str::from_utf8(header).map_err(|_| "header is not text".to_string())?;
        let dict = parse_header(header)?;
        let itemsize = match dict.descr.as_str() {
            "<f4" => 4,
            "<f8" => 8,
            other => {
                return Err(format!(
                    "dtype {other:?} is not supported (expected '<f4' or '<f8')"
                ));
            }
        };
        if dict.fortran_order {
            return Err("Fortran-ordered arrays are not supported".into());
        }
        let side = match dict.shape.as_slice() {
            [3, h, w] if h == w && *h > 0 && *h <= u64::from(u16::MAX) => *h as u32,
            other => return Err(format!("shape {other:?} is not (3, side, side)")),
        };
        let data = &bytes[start + hlen..];
        let count = 3 * side as usize * side as usize;
        if data.len() != count * itemsize {
            return Err(format!(
                "data is {} bytes, expected {} for shape (3, {side}, {side})",
                data.len(),
                count * itemsize
            ));
        }
        let values = if itemsize == 4 {
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            data.chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect()
        };
        let image = MeanImage { side, data: values };
        image.check_values()?;
        Ok(image)
    }

    /// Every value must be a pixel mean: finite, within 0-255.
    fn check_values(&self) -> Result<(), String> {
        let plane = self.plane();
        match self
            .data
            .iter()
            .position(|v| !(v.is_finite() && (0.0..=255.0).contains(v)))
        {
            None => Ok(()),
            Some(i) => Err(format!(
                "value {} at channel {}, row {}, column {} is not a 0-255 pixel mean",
                self.data[i],
                i / plane,
                i % plane / self.side as usize,
                i % self.side as usize
            )),
        }
    }
}

struct HeaderDict {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// Parse numpy's header, a Python dict literal with keys `descr` (a string),
/// `fortran_order` (`True`/`False`) and `shape` (a tuple of integers).
fn parse_header(text: &str) -> Result<HeaderDict, String> {
    let mut p = Parser {
        s: text.trim().as_bytes(),
        i: 0,
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    p.expect(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" => descr = Some(p.string()?),
            "fortran_order" => fortran = Some(p.boolean()?),
            "shape" => shape = Some(p.tuple()?),
            other => return Err(format!("unexpected header key {other:?}")),
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    Ok(HeaderDict {
        descr: descr.ok_or("header lacks 'descr'")?,
        fortran_order: fortran.ok_or("header lacks 'fortran_order'")?,
        shape: shape.ok_or("header lacks 'shape'")?,
    })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "header: expected '{}' at byte {}",
                c as char, self.i
            ))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let quote = match self.s.get(self.i) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("header: expected a string at byte {}", self.i)),
        };
        let start = self.i + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == quote)
            .ok_or("header: unterminated string")?;
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn boolean(&mut self) -> Result<bool, String> {
        self.skip_ws();
        let rest = &self.s[self.i..];
        if rest.starts_with(b"True") {
            self.i += 4;
            Ok(true)
        } else if rest.starts_with(b"False") {
            self.i += 5;
            Ok(false)
        } else {
            Err(format!("header: expected True or False at byte {}", self.i))
        }
    }

    fn tuple(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut out = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(out);
            }
            self.skip_ws();
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
            let n = digits
                .parse::<u64>()
                .map_err(|_| format!("header: expected a dimension at byte {start}"))?;
            out.push(n);
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(side: u32) -> MeanImage {
        let n = 3 * side as usize * side as usize;
        MeanImage {
            side,
            // Pixel means: within 0-255 for every side tested.
            data: (0..n)
                .map(|i| (i % 1000) as f32 * 0.25 + 1.0 / 3.0)
                .collect(),
        }
    }

    #[test]
    fn header_is_numpy_layout() {
        let bytes = example(256).to_npy_bytes();
        let hlen = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        assert_eq!((10 + hlen) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
        assert!(
            header
                .starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 256, 256), }")
        );
        assert!(header.ends_with(" \n"));
        assert_eq!(bytes.len(), 10 + hlen + 3 * 256 * 256 * 4);
    }

    #[test]
    fn round_trip_and_layouts() {
        for side in [1, 2, 5, 256] {
            let m = example(side);
            assert_eq!(MeanImage::from_npy_bytes(&m.to_npy_bytes()).unwrap(), m);
        }
        let m = example(2);
        // CHW -> HWC: element (y, x, c) of HWC is element (c, y, x) of CHW.
        let hwc = m.to_hwc();
        for p in 0..4 {
            for c in 0..3 {
                assert_eq!(hwc[p * 3 + c], m.data[c * 4 + p]);
            }
        }
        assert_eq!(m.channel(1), &m.data[4..8]);
    }

    #[test]
    fn reads_f8_and_version_2() {
        let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 1, 1), }";
        let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
        let hlen = header.len() + 1;
        bytes.extend_from_slice(&(hlen as u32).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.push(b'\n');
        for v in [1.5f64, 2.5, 3.5] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let m = MeanImage::from_npy_bytes(&bytes).unwrap();
        assert_eq!(m.side, 1);
        assert_eq!(m.data, vec![1.5, 2.5, 3.5]);
    }

    #[test]
    fn rejects_bad_files() {
        let good = example(2).to_npy_bytes();
        // Same-length substitutions inside the header.
        let patch = |from: &str, to: &str, keep: usize| {
            let mut b = good[..keep].to_vec();
            let at = b
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            b[at..at + to.len()].copy_from_slice(to.as_bytes());
            b
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PK\x03\x04 not npy".to_vec(), "bad magic"),
            (
                good[..good.len() - 4].to_vec(),
                "data is 44 bytes, expected 48",
            ),
            (patch("<f4", "<i4", good.len()), "dtype"),
            (patch("(3, 2, 2)", "(4, 2, 2)", 128), "shape [4, 2, 2]"),
            (patch("False", "True ", 128), "Fortran"),
        ];
        for (bytes, want) in cases {
            let err = MeanImage::from_npy_bytes(&bytes).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
        // Values that are no pixel means.
        for (i, v) in [
            (0usize, f32::NAN),
            (5, f32::INFINITY),
            (11, -1.0),
            (7, 255.5),
        ] {
            let mut m = example(2);
            m.data[i] = v;
            let err = MeanImage::from_npy_bytes(&m.to_npy_bytes()).unwrap_err();
            let at = format!("channel {}, row {}, column {}", i / 4, i % 4 / 2, i % 2);
            assert!(err.contains(&at) && err.contains("0-255"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        std::fs::write(&path, b"nope").unwrap();
        let err = MeanImage::load_npy(&path).unwrap_err().to_string();
        assert!(err.contains("bad.npy") && err.contains("magic"), "{err}");
    }
}
