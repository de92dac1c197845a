//! Per-image preparation as the AlexNet paper: decode the file (format sniffed from
//! its bytes), scale the shorter side to `side` (256) with an antialiasing filter,
//! and keep the centre `side x side` square; smaller images are scaled up. The result
//! is interleaved RGB u8 (HWC), written into the caller's buffer.
//!
//! Geometry. "Shorter side to `side`, then centre crop" is computed in one step in
//! source coordinates: the centred square of side `min(w, h)` (left `(w - s) / 2`,
//! top `(h - s) / 2`, fractional when the difference is odd) is resampled to
//! `side x side` with fast_image_resize's crop box. This is PIL's
//! `img.resize((side, side), filter, box=(left, top, left + s, top + s))`, which
//! `tools/fixtures/resize.py` uses to make the golden references; it avoids
//! resampling the columns (or rows) that the crop would throw away. For colour
//! images on CPUs with AVX2, fast_image_resize does the vertical pass and this
//! crate's `resample` module the horizontal one (PIL's weights; in `perf record` of
//! `cargo bench -p sv-benches --bench prep` it takes 0.43x the inverse DCT's samples
//! where fast_image_resize's RGB row kernel took 1.15x); gray images and other CPUs use
//! fast_image_resize alone.
//!
//! Speed. A [`Preprocessor`] is made once per worker: it owns the resizer and every
//! scratch buffer, so the steady state allocates nothing beyond what a decoder
//! allocates internally. Large JPEGs can optionally be decoded at a reduced DCT
//! scale (1/2, 1/4, 1/8, as PIL's `draft()`), chosen so the reduced shorter side
//! stays at least `side * reduce_gap`: see [`PrepConfig::reduce_gap`]. It is off by
//! default: only jpeg-decoder offers reduced scales and it is slower than zune-jpeg,
//! so `cargo bench -p sv-benches --bench prep` measured no gain at `reduce_gap = 2`
//! and 10-25% at `reduce_gap = 1`, at a cost in fidelity to PIL's full-size resize.
//!
//! Colour. Gray JPEGs and PNGs are resized as one channel and replicated to RGB;
//! CMYK and YCCK JPEGs (Adobe convention, as PIL) become RGB in the decoder; PNG
//! alpha is dropped (PIL's `convert("RGB")`), palettes are expanded, 16-bit samples
//! rounded to 8 bits.
#![warn(missing_docs)]

mod decode;
mod entropy;
mod error;
mod resample;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

pub use decode::{Limits, jpeg_rgb_exact, sniff};
pub use entropy::JpegCheck;
pub use error::{Format, ImageError, Limit, Truncation};

/// The antialiasing filter of the resize (convolution with a support that widens
/// with the scale factor, as PIL's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Filter {
    /// Triangle filter: PIL's and torchvision's `BILINEAR` (the default).
    #[default]
    Bilinear,
    /// Hamming window: bilinear cost, sharper.
    Hamming,
    /// Catmull-Rom cubic: PIL's `BICUBIC`.
    CatmullRom,
    /// Lanczos with 3 lobes: PIL's `LANCZOS`.
    Lanczos3,
}

impl Filter {
    fn fir(self) -> FilterType {
        match self {
            Filter::Bilinear => FilterType::Bilinear,
            Filter::Hamming => FilterType::Hamming,
            Filter::CatmullRom => FilterType::CatmullRom,
            Filter::Lanczos3 => FilterType::Lanczos3,
        }
    }
}

/// How images are prepared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrepConfig {
    /// Side of the output square (256 in the paper).
    pub side: u32,
    /// Resize filter.
    pub filter: Filter,
    /// Decoder limits.
    pub limits: Limits,
    /// Decode a JPEG at 1/2, 1/4 or 1/8 scale when its reduced shorter side is still
    /// at least `side * reduce_gap` (the largest such reduction is taken); 0 disables.
    /// 2.0 keeps at least twice the target resolution before the antialiasing resize
    /// (PIL's `thumbnail` default); 1.0 is fastest. Default 0 (off, see the crate
    /// header).
    pub reduce_gap: f32,
}

impl Default for PrepConfig {
    fn default() -> Self {
        PrepConfig {
            side: 256,
            filter: Filter::default(),
            limits: Limits::default(),
            reduce_gap: 0.0,
        }
    }
}

impl PrepConfig {
    /// The default configuration with another output side.
    pub fn with_side(side: u32) -> Self {
        PrepConfig {
            side,
            ..PrepConfig::default()
        }
    }

    /// The source pixels the resize of a `w x h` image reads, `[x0, x1, y0, y1]`: the
    /// centred square widened by the filter's reach at this scale, and 2 px more.
    fn needed_region(&self, w: u32, h: u32) -> [usize; 4] {
        let (w, h) = (f64::from(w), f64::from(h));
        let s = w.min(h);
        let reach = self.filter.support() * (s / f64::from(self.side)).max(1.0) + 2.0;
        let span = |full: f64| {
            let lo = (full - s) / 2.0 - reach;
            let hi = (full + s) / 2.0 + reach;
            (lo.floor().max(0.0) as usize, hi.ceil().min(full) as usize)
        };
        let ((x0, x1), (y0, y1)) = (span(w), span(h));
        [x0, x1, y0, y1]
    }

    /// DCT reduction denominator for a `w x h` JPEG.
    fn reduction(&self, w: u32, h: u32) -> u32 {
        if self.reduce_gap <= 0.0 {
            return 1;
        }
        let short = f64::from(w.min(h));
        let need = f64::from(self.side) * f64::from(self.reduce_gap);
        [8, 4, 2]
            .into_iter()
            .find(|&k| short / f64::from(k) >= need)
            .unwrap_or(1)
    }
}

/// What was prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// The sniffed format.
    pub format: Format,
    /// Width declared by the file.
    pub width: u32,
    /// Height declared by the file.
    pub height: u32,
    /// 1 when the source was gray, 3 for colour (CMYK counts as colour).
    pub channels: u8,
    /// DCT reduction used when decoding (1 = full size).
    pub reduction: u32,
}

/// A per-worker image preparer: owns the resizer and scratch buffers and reuses
/// them for every image.
pub struct Preprocessor {
    config: PrepConfig,
    options: ResizeOptions,
    resizer: Resizer,
    /// Decoded pixels (gray or RGB).
    pixels: Vec<u8>,
    /// PNG layouts that need converting (alpha, 16-bit).
    raw: Vec<u8>,
    /// Resized gray square, replicated to RGB at the end.
    gray: Vec<u8>,
    /// Colour: the vertical pass's rows (fast_image_resize), then ours across.
    rows: Vec<u8>,
    plan: resample::Plan,
    /// Entropy-data completeness check (tables and refinement state reused).
    check: JpegCheck,
    /// Tell the JPEG decoder which pixels the resize reads (off only in tests, to
    /// compare with a full decode).
    region: bool,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Preprocessor {
    /// A preparer for `config` (a zero `side` is treated as 1).
    pub fn new(mut config: PrepConfig) -> Self {
        config.side = config.side.max(1);
        Preprocessor {
            options: ResizeOptions::new().resize_alg(ResizeAlg::Convolution(config.filter.fir())),
            config,
            resizer: Resizer::new(),
            pixels: Vec::new(),
            raw: Vec::new(),
            gray: Vec::new(),
            rows: Vec::new(),
            plan: resample::Plan::default(),
            check: JpegCheck::new(),
            region: true,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &PrepConfig {
        &self.config
    }

    /// How many JPEGs this preparer has walked with [`JpegCheck`] before decoding
    /// them: progressive ones, scans of fewer than all components, files that do not
    /// end in an EOI marker and reduced-size decodes. A sequential JPEG in one
    /// interleaved scan that ends in EOI is checked for missing scan data inside the
    /// decoder instead, at no extra cost.
    pub fn jpeg_walks(&self) -> u64 {
        self.check.walks
    }

    /// Bytes of one output image: `side * side * 3`.
    pub fn output_len(&self) -> usize {
        let side = self.config.side as usize;
        side * side * 3
    }

    /// Decode `bytes` and write the `side x side` RGB square into `out`
    /// (`out.len()` must be [`Self::output_len`]).
    pub fn process(&mut self, bytes: &[u8], out: &mut [u8]) -> Result<(), ImageError> {
        self.process_info(bytes, out).map(|_| ())
    }

    /// As [`Self::process`], and say what the source was.
    pub fn process_info(&mut self, bytes: &[u8], out: &mut [u8]) -> Result<SourceInfo, ImageError> {
        if out.len() != self.output_len() {
            return Err(ImageError::OutputSize {
                expected: self.output_len(),
                found: out.len(),
            });
        }
        let format = sniff(bytes)?;
        let config = self.config;
        let pixels = &mut self.pixels;
        let raw = &mut self.raw;
        let check = &mut self.check;
        let region = self.region;
        // Decoders are fuzzed but third-party; a panic on hostile bytes must not
        // take a worker down, so it becomes a corrupt-file error.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match format {
            Format::Jpeg => decode::jpeg(
                bytes,
                &config.limits,
                |w, h| config.reduction(w, h),
                |w, h| {
                    if region {
                        config.needed_region(w, h)
                    } else {
                        [0, w as usize, 0, h as usize]
                    }
                },
                check,
                pixels,
            ),
            Format::Png => decode::png(bytes, &config.limits, pixels, raw),
        }))
        .map_err(|_| ImageError::Corrupt {
            format,
            reason: "decoder panicked".into(),
        })??;
        self.resize(&decoded, out)?;
        Ok(SourceInfo {
            format,
            width: decoded.source_width,
            height: decoded.source_height,
            channels: decoded.channels as u8,
            reduction: decoded.reduction,
        })
    }

    fn resize(&mut self, d: &decode::Decoded, out: &mut [u8]) -> Result<(), ImageError> {
        let side = self.config.side;
        // The centred square of the source, scaled into decoded coordinates.
        let k = f64::from(d.reduction);
        let (sw, sh) = (f64::from(d.source_width), f64::from(d.source_height));
        let s = sw.min(sh);
        let options = self
            .options
            .crop((sw - s) / 2.0 / k, (sh - s) / 2.0 / k, s / k, s / k);
        let fail = |e: &dyn std::fmt::Display| ImageError::Corrupt {
            format: d.format,
            reason: format!("resize: {e}"),
        };
        let n = d.width as usize * d.height as usize * d.channels;
        let src_bytes = self
            .pixels
            .get(..n)
            .ok_or_else(|| fail(&"short pixel buffer"))?;
        if d.channels == 3 {
            let src = ImageRef::new(d.width, d.height, src_bytes, PixelType::U8x3)
                .map_err(|e| fail(&e))?;
            let (left, top, s) = ((sw - s) / 2.0 / k, (sh - s) / 2.0 / k, s / k);
            if self.plan.build(self.config.filter, d.width, left, s, side) {
                // Down the columns the horizontal pass reads (fast_image_resize,
                // whole columns, so it does no horizontal pass), then across (ours).
                let plan = &self.plan;
                let n = plan.width as usize * side as usize * 3;
                self.rows.resize(n + resample::Plan::SLACK, 0);
                let mut rows =
                    Image::from_slice_u8(plan.width, side, &mut self.rows[..n], PixelType::U8x3)
                        .map_err(|e| fail(&e))?;
                let down = self
                    .options
                    .crop(f64::from(plan.first), top, f64::from(plan.width), s);
                self.resizer
                    .resize(&src, &mut rows, &down)
                    .map_err(|e| fail(&e))?;
                plan.run(&self.rows, side as usize, out);
            } else {
                let mut dst =
                    Image::from_slice_u8(side, side, out, PixelType::U8x3).map_err(|e| fail(&e))?;
                self.resizer
                    .resize(&src, &mut dst, &options)
                    .map_err(|e| fail(&e))?;
            }
        } else {
            let src =
                ImageRef::new(d.width, d.height, src_bytes, PixelType::U8).map_err(|e| fail(&e))?;
            let plane = side as usize * side as usize;
            if self.gray.len() != plane {
                self.gray.resize(plane, 0);
            }
            let mut dst = Image::from_slice_u8(side, side, &mut self.gray, PixelType::U8)
                .map_err(|e| fail(&e))?;
            self.resizer
                .resize(&src, &mut dst, &options)
                .map_err(|e| fail(&e))?;
            for (rgb, &g) in out.chunks_exact_mut(3).zip(&self.gray) {
                rgb.fill(g);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
