//! Decoding into reusable buffers: JPEG through zune-jpeg (SIMD, every colour space
//! ImageNet holds), or through jpeg-decoder when a reduced DCT scale (1/2, 1/4, 1/8)
//! is wanted, which zune-jpeg does not offer; PNG through the image crate. Gray
//! sources stay one channel so the resize touches a third of the bytes.

use std::io::Cursor;

use image::ImageDecoder;
use image::codecs::png::PngDecoder;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::{JpegDecoder, SliceReader};

use crate::entropy::JpegCheck;
use crate::error::{Format, ImageError, Limit};

const JPEG_MAGIC: [u8; 3] = [0xFF, 0xD8, 0xFF];
const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Decoder limits: a file declaring more than this is refused before any pixel
/// memory is allocated (decompression-bomb guard).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest accepted decoded size in bytes (width x height x channels).
    pub max_alloc: u64,
}

impl Default for Limits {
    /// 16384 x 16384 and 256 MiB: far above any ImageNet photo (the largest train
    /// image is under 5000 px a side) and far below what would exhaust a worker.
    fn default() -> Self {
        Limits {
            max_width: 16_384,
            max_height: 16_384,
            max_alloc: 256 << 20,
        }
    }
}

impl Limits {
    pub(crate) fn check(
        &self,
        format: Format,
        width: u64,
        height: u64,
        channels: u64,
    ) -> Result<(), ImageError> {
        let hit = |limit, value, max| ImageError::LimitExceeded {
            format,
            width,
            height,
            limit,
            value,
            max,
        };
        if width > u64::from(self.max_width) {
            return Err(hit(Limit::Width, width, u64::from(self.max_width)));
        }
        if height > u64::from(self.max_height) {
            return Err(hit(Limit::Height, height, u64::from(self.max_height)));
        }
        let bytes = width.saturating_mul(height).saturating_mul(channels);
        if bytes > self.max_alloc {
            return Err(hit(Limit::Alloc, bytes, self.max_alloc));
        }
        Ok(())
    }
}

/// The format of `bytes`, from their signature.
pub fn sniff(bytes: &[u8]) -> Result<Format, ImageError> {
    if bytes.is_empty() {
        Err(ImageError::Empty)
    } else if bytes.starts_with(&JPEG_MAGIC) {
        Ok(Format::Jpeg)
    } else if bytes.starts_with(&PNG_MAGIC) {
        Ok(Format::Png)
    } else {
        Err(ImageError::UnknownFormat {
            magic: bytes[..bytes.len().min(8)].to_vec(),
        })
    }
}

/// What a decode left in the pixel buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Decoded {
    pub format: Format,
    /// Dimensions declared by the file.
    pub source_width: u32,
    pub source_height: u32,
    /// Dimensions of the pixels in the buffer (smaller when DCT-reduced).
    pub width: u32,
    pub height: u32,
    /// 1 (gray) or 3 (RGB), interleaved.
    pub channels: usize,
    /// DCT reduction denominator: 1, 2, 4 or 8.
    pub reduction: u32,
}

fn corrupt(format: Format, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Corrupt {
        format,
        reason: reason.to_string(),
    }
}

fn zune_error(e: DecodeErrors) -> ImageError {
    match e {
        DecodeErrors::Unsupported(scheme) => ImageError::Unsupported {
            format: Format::Jpeg,
            reason: format!("{scheme:?}"),
        },
        // zune's Display quotes these (it prints its Debug form).
        DecodeErrors::Format(reason) => corrupt(Format::Jpeg, reason),
        DecodeErrors::FormatStatic(reason) => corrupt(Format::Jpeg, reason),
        DecodeErrors::ExhaustedData | DecodeErrors::IoErrors(_) => {
            corrupt(Format::Jpeg, "the file ends inside a header or scan")
        }
        other => corrupt(Format::Jpeg, other),
    }
}

/// Make `buf` at least `n` bytes without clearing what is there (it is overwritten).
fn grow(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    &mut buf[..n]
}

/// The one set-up of zune-jpeg's decoder, for every JPEG the workspace decodes (files
/// here, shard records through [`jpeg_rgb_exact`]): the vendored decoder's
/// `SliceReader` (direct slice access), strict mode (with the vendored truncation
/// check, vendor/zune-jpeg/PATCHED.md), the headers read and the frame size returned.
/// zune's own size cap is the JPEG maximum: its refusal would be a generic format
/// error, so the callers check their limits themselves before any pixel is decoded.
fn open_jpeg(bytes: &[u8]) -> Result<(JpegDecoder<SliceReader<'_>>, u32, u32), ImageError> {
    let options = DecoderOptions::default()
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .set_strict_mode(true);
    let mut dec = JpegDecoder::new_with_options(SliceReader::new(bytes), options);
    dec.decode_headers().map_err(zune_error)?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| corrupt(Format::Jpeg, "no frame header"))?;
    let (w, h) = (w as u32, h as u32);
    if w == 0 || h == 0 {
        return Err(corrupt(Format::Jpeg, format!("zero dimension {w}x{h}")));
    }
    Ok((dec, w, h))
}

/// Decode a JPEG that must be exactly `width x height` pixels into `out` as
/// interleaved RGB (`width * height * 3` bytes; gray and CMYK converted), at full size
/// and without resizing: sv-shard's JPEG records, which `shard build` wrote at the
/// stored side. A JPEG of another size is refused before any pixel is decoded.
pub fn jpeg_rgb_exact(
    bytes: &[u8],
    width: u32,
    height: u32,
    out: &mut [u8],
) -> Result<(), ImageError> {
    let (mut dec, w, h) = open_jpeg(bytes)?;
    if (w, h) != (width, height) {
        return Err(corrupt(
            Format::Jpeg,
            format!("{w}x{h} pixels, expected {width}x{height}"),
        ));
    }
    dec.set_options(dec.options().jpeg_set_out_colorspace(ColorSpace::RGB));
    match dec.output_buffer_size() {
        Some(n) if n == out.len() => {}
        Some(n) => {
            return Err(ImageError::OutputSize {
                expected: n,
                found: out.len(),
            });
        }
        None => return Err(corrupt(Format::Jpeg, "image size overflows")),
    }
    dec.decode_into(out).map_err(zune_error)
}

/// Decode a JPEG into `buf`. `reduction(width, height)` picks the DCT scale
/// denominator (1 = full size).
pub(crate) fn jpeg(
    bytes: &[u8],
    limits: &Limits,
    reduction: impl Fn(u32, u32) -> u32,
    region: impl Fn(u32, u32) -> [usize; 4],
    check: &mut JpegCheck,
    buf: &mut Vec<u8>,
) -> Result<Decoded, ImageError> {
    let (mut dec, w, h) = open_jpeg(bytes)?;
    let input = dec
        .input_colorspace()
        .ok_or_else(|| corrupt(Format::Jpeg, "no colour space"))?;
    let gray = input == ColorSpace::Luma;
    let channels = if gray { 1 } else { 3 };
    limits.check(Format::Jpeg, w.into(), h.into(), channels as u64)?;
    let k = reduction(w, h);
    // The decoder feeds zero bits where a scan's data is missing. Our zune-jpeg
    // (vendor/zune-jpeg/PATCHED.md) refuses that in strict mode for a sequential image
    // in one interleaved scan; the rest (progressive images, component-by-component
    // scans, files that end without EOI, reduced decodes through jpeg-decoder) are
    // walked first.
    let in_decoder =
        k == 1 && bytes.ends_with(&[0xFF, 0xD9]) && crate::entropy::interleaved_sequential(bytes);
    if !in_decoder {
        check.check(bytes)?;
        check.walks += 1;
    }

    if k > 1 && matches!(input, ColorSpace::YCbCr | ColorSpace::Luma) {
        // jpeg-decoder may refuse a file zune accepts; then decode at full size.
        if let Some(d) = jpeg_reduced(bytes, w, h, k, limits, buf) {
            return Ok(d);
        }
    }

    let out_space = if gray {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    dec.set_options(dec.options().jpeg_set_out_colorspace(out_space));
    // Blocks the resize will not read skip their inverse DCT (vendor/zune-jpeg/PATCHED.md).
    let [x0, x1, y0, y1] = region(w, h);
    dec.set_region_of_interest(x0, x1, y0, y1);
    let n = dec
        .output_buffer_size()
        .ok_or_else(|| corrupt(Format::Jpeg, "image size overflows"))?;
    if let Err(e) = dec.decode_into(grow(buf, n)) {
        // Not walked yet: a truncation gets the walk's account of it (which scan,
        // how many of its MCUs are there) in place of the decoder's one line.
        if in_decoder {
            check.check(bytes)?;
        }
        return Err(zune_error(e));
    }
    Ok(Decoded {
        format: Format::Jpeg,
        source_width: w,
        source_height: h,
        width: w,
        height: h,
        channels,
        reduction: 1,
    })
}

/// Decode at 1/k scale with jpeg-decoder; None when it cannot (the caller falls back).
fn jpeg_reduced(
    bytes: &[u8],
    w: u32,
    h: u32,
    k: u32,
    limits: &Limits,
    buf: &mut Vec<u8>,
) -> Option<Decoded> {
    let mut dec = jpeg_decoder::Decoder::new(bytes);
    dec.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
    let req_w = u16::try_from(w.div_ceil(k)).ok()?;
    let req_h = u16::try_from(h.div_ceil(k)).ok()?;
    let (sw, sh) = dec.scale(req_w, req_h).ok()?;
    let info = dec.info()?;
    let channels = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        _ => return None,
    };
    // The IDCT scale is chosen so the output is at least the request; anything
    // else means a scale other than 1/k and the crop box would be wrong.
    if u32::from(sw) != w.div_ceil(k) || u32::from(sh) != h.div_ceil(k) {
        return None;
    }
    let mut pixels = dec.decode().ok()?;
    if pixels.len() != usize::from(sw) * usize::from(sh) * channels {
        return None;
    }
    std::mem::swap(buf, &mut pixels);
    Some(Decoded {
        format: Format::Jpeg,
        source_width: w,
        source_height: h,
        width: sw.into(),
        height: sh.into(),
        channels,
        reduction: k,
    })
}

fn png_error(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Unsupported(u) => ImageError::Unsupported {
            format: Format::Png,
            reason: u.to_string(),
        },
        other => corrupt(Format::Png, other),
    }
}

/// Decode a PNG into `buf` as 8-bit gray or RGB (alpha dropped, as PIL's
/// `convert("RGB")`; 16-bit samples rounded to 8 bits). `raw` is scratch space for
/// layouts that need converting.
pub(crate) fn png(
    bytes: &[u8],
    limits: &Limits,
    buf: &mut Vec<u8>,
    raw: &mut Vec<u8>,
) -> Result<Decoded, ImageError> {
    use image::ColorType as C;
    let mut dec = PngDecoder::new(Cursor::new(bytes)).map_err(png_error)?;
    let (w, h) = dec.dimensions();
    if w == 0 || h == 0 {
        return Err(corrupt(Format::Png, format!("zero dimension {w}x{h}")));
    }
    let color = dec.color_type();
    let channels: usize = match color {
        C::L8 | C::La8 | C::L16 | C::La16 => 1,
        C::Rgb8 | C::Rgba8 | C::Rgb16 | C::Rgba16 => 3,
        other => {
            return Err(ImageError::Unsupported {
                format: Format::Png,
                reason: format!("colour type {other:?}"),
            });
        }
    };
    // The decoder itself holds the raw layout (up to 8 bytes a pixel); guard that.
    let raw_len = dec.total_bytes();
    limits.check(Format::Png, w.into(), h.into(), channels as u64)?;
    if raw_len > limits.max_alloc {
        return Err(ImageError::LimitExceeded {
            format: Format::Png,
            width: w.into(),
            height: h.into(),
            limit: Limit::Alloc,
            value: raw_len,
            max: limits.max_alloc,
        });
    }
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc);
    dec.set_limits(image_limits).map_err(png_error)?;

    let raw_len = usize::try_from(raw_len).map_err(|_| corrupt(Format::Png, "size overflows"))?;
    let pixels = w as usize * h as usize;
    if matches!(color, C::L8 | C::Rgb8) {
        dec.read_image(grow(buf, raw_len)).map_err(png_error)?;
    } else {
        let src = grow(raw, raw_len);
        dec.read_image(src).map_err(png_error)?;
        let dst = grow(buf, pixels * channels);
        match color {
            C::La8 => copy_strided(src, dst, 2, 1),
            C::Rgba8 => copy_strided(src, dst, 4, 3),
            C::L16 => narrow16(src, dst, 1, 1),
            C::La16 => narrow16(src, dst, 2, 1),
            C::Rgb16 => narrow16(src, dst, 3, 3),
            _ => narrow16(src, dst, 4, 3), // Rgba16: the only colour type left
        }
    }
    Ok(Decoded {
        format: Format::Png,
        source_width: w,
        source_height: h,
        width: w,
        height: h,
        channels,
        reduction: 1,
    })
}

/// Keep the first `keep` of every `stride` bytes.
fn copy_strided(src: &[u8], dst: &mut [u8], stride: usize, keep: usize) {
    for (s, d) in src.chunks_exact(stride).zip(dst.chunks_exact_mut(keep)) {
        d.copy_from_slice(&s[..keep]);
    }
}

/// Native-endian 16-bit samples (`stride` per pixel) to 8 bits, first `keep` kept,
/// rounded as `v * 255 / 65535`.
fn narrow16(src: &[u8], dst: &mut [u8], stride: usize, keep: usize) {
    for (s, d) in src.chunks_exact(2 * stride).zip(dst.chunks_exact_mut(keep)) {
        for (c, out) in d.iter_mut().enumerate() {
            let v = u32::from(u16::from_ne_bytes([s[2 * c], s[2 * c + 1]]));
            *out = ((v * 255 + 32_767) / 65_535) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sv-shard's record decoder did before it called [`jpeg_rgb_exact`]: zune's
    /// lenient mode, RGB out, its size cap at the record's size.
    fn lenient_rgb(bytes: &[u8], w: usize, h: usize) -> Vec<u8> {
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_max_width(w)
            .set_max_height(h);
        JpegDecoder::new_with_options(SliceReader::new(bytes), options)
            .decode()
            .expect("lenient decode")
    }

    /// Records as sv-shard's writer encodes them, and every JPEG fixture (libjpeg's
    /// progressive, restart-marker, gray and CMYK layouts among them).
    fn jpegs() -> Vec<(String, Vec<u8>)> {
        let mut all = Vec::new();
        let (side, pixels) = (48u16, (0..48 * 48 * 3).map(|i| (i * 7 % 251) as u8));
        let pixels: Vec<u8> = pixels.collect();
        for (name, factor) in [
            ("record-444", jpeg_encoder::SamplingFactor::F_1_1),
            ("record-420", jpeg_encoder::SamplingFactor::F_2_2),
        ] {
            let mut out = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut out, 95);
            enc.set_sampling_factor(factor);
            enc.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
            enc.encode(&pixels, side, side, jpeg_encoder::ColorType::Rgb)
                .expect("encode");
            all.push((name.to_string(), out));
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for entry in std::fs::read_dir(&dir).expect("fixtures") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "jpg") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                all.push((name, std::fs::read(&path).expect("read fixture")));
            }
        }
        assert!(all.len() > 8, "fixtures not found in {}", dir.display());
        all
    }

    #[test]
    fn exact_decode_gives_the_pixels_of_the_lenient_decoder() {
        for (name, bytes) in jpegs() {
            let (w, h) = {
                let mut dec = JpegDecoder::new(SliceReader::new(&bytes));
                dec.decode_headers().expect("headers");
                dec.dimensions().expect("dimensions")
            };
            let want = lenient_rgb(&bytes, w, h);
            let mut got = vec![0u8; w * h * 3];
            jpeg_rgb_exact(&bytes, w as u32, h as u32, &mut got)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(got == want, "{name}: pixels differ");
        }
    }

    #[test]
    fn exact_decode_refuses_another_size_and_a_wrong_buffer() {
        let (_, bytes) = jpegs().remove(0);
        let mut out = vec![0u8; 48 * 48 * 3];
        let e = jpeg_rgb_exact(&bytes, 64, 48, &mut out).unwrap_err();
        assert_eq!(e.to_string(), "corrupt JPEG: 48x48 pixels, expected 64x48");
        let e = jpeg_rgb_exact(&bytes, 48, 48, &mut out[1..]).unwrap_err();
        assert!(
            matches!(
                e,
                ImageError::OutputSize {
                    expected: 6912,
                    found: 6911
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn exact_decode_refuses_a_cut_record() {
        let (_, bytes) = jpegs().remove(1);
        // cut inside the scan data, EOI put back: the lenient decoder made up the rest
        let mut cut = bytes[..bytes.len() * 2 / 3].to_vec();
        cut.extend_from_slice(&[0xFF, 0xD9]);
        let mut out = vec![0u8; 48 * 48 * 3];
        let e = jpeg_rgb_exact(&cut, 48, 48, &mut out).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
