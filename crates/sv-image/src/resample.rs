//! The horizontal pass of the resize for interleaved RGB, where fast_image_resize
//! spends most of a prepared image's resize time (its `u8x3` AVX2 row kernel).
//!
//! The resize is separable. fast_image_resize does the vertical pass (source rows
//! into `side` rows, over the columns the horizontal pass will read); this module
//! then takes those rows to `side` columns. The weights are PIL's (`precompute_coeffs`
//! in `Resample.c`: the filter widened by the scale factor, the box's fractional
//! edges kept, normalised per output pixel), rounded to 14-bit fixed point with each
//! output pixel's weights summing to exactly `1 << 14`, so flat areas stay exact.
//!
//! Every output pixel reads its taps four at a time: the 16 bytes at the group's
//! first pixel are loaded into both halves of an AVX2 register, one byte shuffle makes
//! `[R0 R1 G0 G1 B0 B1 0 0 | R2 R3 G2 G3 B2 B3 0 0]` in 16-bit lanes, and one
//! `vpmaddwd` with `[w0 w1 w0 w1 w0 w1 0 0 | w2 w3 w2 w3 w2 w3 0 0]` adds all four
//! taps into R, G and B (the two halves are added at the end). The scalar kernel
//! computes the same sums in the same integers, so the two agree exactly
//! (`tests::simd_matches_scalar`); it is the reference, and where AVX2 is missing
//! [`Plan::build`] declines so the caller keeps fast_image_resize.

use crate::Filter;

/// Fixed-point weight bits.
const BITS: u32 = 14;
const ONE: i32 = 1 << BITS;

impl Filter {
    /// Support radius at scale 1 (PIL's filters).
    pub(crate) fn support(self) -> f64 {
        match self {
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::CatmullRom => 2.0,
            Filter::Lanczos3 => 3.0,
        }
    }

    /// The kernel (PIL's `bilinear_filter`, `hamming_filter`, `bicubic_filter` with
    /// a = -0.5, `lanczos_filter`).
    fn eval(self, x: f64) -> f64 {
        use std::f64::consts::PI;
        let sinc = |x: f64| {
            if x == 0.0 {
                1.0
            } else {
                (x * PI).sin() / (x * PI)
            }
        };
        let ax = x.abs();
        match self {
            Filter::Bilinear => (1.0 - ax).max(0.0),
            Filter::Hamming => {
                if ax == 0.0 {
                    1.0
                } else if ax >= 1.0 {
                    0.0
                } else {
                    let x = ax * PI;
                    x.sin() / x * (0.54 + 0.46 * x.cos())
                }
            }
            Filter::CatmullRom => {
                let a = -0.5;
                if ax < 1.0 {
                    ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
                } else if ax < 2.0 {
                    (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Lanczos3 => {
                if ax < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// The horizontal pass for one geometry: which source columns each output pixel
/// reads and with what weights. Reused across images (its buffers are kept).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// First source column the pass reads (columns before it are not needed).
    pub first: u32,
    /// Columns the pass reads, from `first`.
    pub width: u32,
    /// Output pixels.
    out: usize,
    /// Taps per output pixel, a multiple of 4 (zero weights pad short windows).
    taps: usize,
    /// Each output pixel's first tap, relative to `first`; `start + taps <= width`.
    starts: Vec<u32>,
    /// `taps` weights per output pixel.
    weights: Vec<i16>,
    /// `taps / 4` shuffle-ready groups per output pixel:
    /// `[w0 w1 w0 w1 w0 w1 0 0 w2 w3 w2 w3 w2 w3 0 0]`.
    quads: Vec<[i16; 16]>,
    /// Float weights and windows while building (kept to reuse the memory).
    scratch: Vec<f64>,
    windows: Vec<(i64, i64)>,
}

impl Plan {
    /// Plan `out` output pixels over the source span `[box0, box0 + len)` of a row of
    /// `in_size` pixels. `false` when the pass cannot run here (no AVX2, or the padded
    /// window is wider than the columns available: tiny sources), and the caller
    /// resizes another way.
    pub fn build(&mut self, filter: Filter, in_size: u32, box0: f64, len: f64, out: u32) -> bool {
        self.build_any_cpu(filter, in_size, box0, len, out) && Self::simd()
    }

    /// Whether this CPU runs the SIMD kernel.
    fn simd() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// [`Self::build`] whatever the CPU (the scalar kernel runs anywhere).
    fn build_any_cpu(
        &mut self,
        filter: Filter,
        in_size: u32,
        box0: f64,
        len: f64,
        out: u32,
    ) -> bool {
        let out_n = out as usize;
        let scale = len / f64::from(out);
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let in_size = i64::from(in_size);
        self.windows.clear();
        self.scratch.clear();
        let mut widest = 0;
        // PIL's precompute_coeffs: the window of each output pixel, its float weights.
        for xx in 0..out_n {
            let center = box0 + (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size);
            let count = (xmax - xmin).max(0);
            let at = self.scratch.len();
            let mut sum = 0.0;
            for x in 0..count {
                let w = filter.eval(((x + xmin) as f64 - center + 0.5) / filterscale);
                self.scratch.push(w);
                sum += w;
            }
            if sum != 0.0 {
                for w in &mut self.scratch[at..] {
                    *w /= sum;
                }
            }
            self.windows.push((xmin, count));
            widest = widest.max(count);
        }
        let taps = (widest as usize + 3) & !3;
        let first = self.windows.iter().map(|w| w.0).min().unwrap_or(0);
        let last = self.windows.iter().map(|w| w.0 + w.1).max().unwrap_or(0);
        let width = (last - first) as usize;
        if taps == 0 || taps > width {
            return false;
        }
        self.first = first as u32;
        self.width = width as u32;
        self.out = out_n;
        self.taps = taps;
        self.starts.clear();
        self.weights.clear();
        self.weights.resize(out_n * taps, 0);
        let mut at = 0;
        for (xx, &(xmin, count)) in self.windows.iter().enumerate() {
            let count = count as usize;
            let floats = &self.scratch[at..at + count];
            at += count;
            // Keep the window inside the columns read: a window that would run past
            // the right edge starts earlier, its weights shifted right.
            let rel = (xmin - first) as usize;
            let start = rel.min(width - taps);
            let shift = rel - start;
            let ws = &mut self.weights[xx * taps..(xx + 1) * taps];
            for (k, &f) in floats.iter().enumerate() {
                ws[shift + k] = (f * f64::from(ONE)).round() as i16;
            }
            // Make the fixed-point weights sum to exactly ONE (on the largest one).
            let total: i32 = ws.iter().map(|&w| i32::from(w)).sum();
            if count > 0 {
                let big = (0..taps).max_by_key(|&k| ws[k].unsigned_abs()).unwrap_or(0);
                ws[big] = (i32::from(ws[big]) + ONE - total) as i16;
            }
            self.starts.push(start as u32);
        }
        self.quads.clear();
        for ws in self.weights.chunks_exact(4) {
            let (a, b, c, d) = (ws[0], ws[1], ws[2], ws[3]);
            self.quads
                .push([a, b, a, b, a, b, 0, 0, c, d, c, d, c, d, 0, 0]);
        }
        true
    }

    /// Bytes of slack the source must have after its last row (the last group's
    /// 16-byte load reads 4 bytes past its four pixels).
    pub const SLACK: usize = 16;

    /// Resample `rows` rows of `self.width` RGB pixels (`src`, rows back to back,
    /// followed by at least [`Self::SLACK`] bytes) into `rows` rows of the planned
    /// output width (`dst`). Only after [`Self::build`] said yes.
    pub fn run(&self, src: &[u8], rows: usize, dst: &mut [u8]) {
        let stride = self.width as usize * 3;
        assert!(
            src.len() >= rows * stride + Self::SLACK,
            "resample: short source"
        );
        assert_eq!(dst.len(), rows * self.out * 3, "resample: output size");
        #[cfg(target_arch = "x86_64")]
        if Self::simd() {
            // SAFETY: the CPU has AVX2 (checked above); sizes asserted above. One and
            // two groups (up to 8 taps: ImageNet's sizes to 256) get unrolled copies.
            unsafe {
                match self.taps / 4 {
                    1 => self.run_avx2::<1>(src, rows, dst),
                    2 => self.run_avx2::<2>(src, rows, dst),
                    _ => self.run_avx2::<0>(src, rows, dst),
                }
            }
            return;
        }
        self.run_scalar(src, rows, dst);
    }

    /// The reference kernel: the same integer sums, one tap at a time.
    pub(crate) fn run_scalar(&self, src: &[u8], rows: usize, dst: &mut [u8]) {
        let stride = self.width as usize * 3;
        for (r, out_row) in dst.chunks_exact_mut(self.out * 3).take(rows).enumerate() {
            let row = &src[r * stride..(r + 1) * stride];
            for (x, px) in out_row.chunks_exact_mut(3).enumerate() {
                let s = self.starts[x] as usize * 3;
                let ws = &self.weights[x * self.taps..(x + 1) * self.taps];
                let mut acc = [ONE / 2; 3];
                for (k, &w) in ws.iter().enumerate() {
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += i32::from(w) * i32::from(row[s + 3 * k + c]);
                    }
                }
                for (o, a) in px.iter_mut().zip(acc) {
                    *o = (a >> BITS).clamp(0, 255) as u8;
                }
            }
        }
    }

    /// `G` groups of four taps per output pixel (0: `taps / 4`, a loop).
    ///
    /// # Safety
    /// The CPU must support AVX2; `src` and `dst` sized as [`Self::run`] asserts;
    /// `G` is 0 or `taps / 4`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2<const G: usize>(&self, src: &[u8], rows: usize, dst: &mut [u8]) {
        use std::arch::x86_64::{
            __m128i, __m256i, _mm_add_epi32, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_packs_epi32,
            _mm_packus_epi16, _mm_setr_epi8, _mm_shuffle_epi8, _mm_srai_epi32, _mm_storeu_si128,
            _mm256_add_epi32, _mm256_broadcastsi128_si256, _mm256_castsi256_si128,
            _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_setr_epi8,
            _mm256_setr_epi32, _mm256_shuffle_epi8,
        };
        let stride = self.width as usize * 3;
        let groups = if G == 0 { self.taps / 4 } else { G };
        debug_assert_eq!(groups, self.taps / 4);
        // Low half: pixels 0 and 1 of the group; high half: pixels 2 and 3.
        #[rustfmt::skip]
        let mask = _mm256_setr_epi8(
            0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,
            6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
        );
        // The rounding half, added once (low half, R G B lanes).
        let round = _mm256_setr_epi32(ONE / 2, ONE / 2, ONE / 2, 0, 0, 0, 0, 0);
        // Four pixels' [R G B 0] bytes to 12 packed bytes.
        let compact = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
        let out_w = self.out;
        let starts = &self.starts[..out_w];
        let quads = &self.quads[..out_w * groups];
        // One output pixel's sums [R G B 0] (32-bit, rounding included).
        let pixel = |row: *const u8, x: usize| -> __m128i {
            let s = starts[x] as usize;
            let mut acc = round;
            for (g, w) in quads[x * groups..(x + 1) * groups].iter().enumerate() {
                // SAFETY: the group's pixels end at s + taps <= width, so the 16 bytes
                // read end at most 4 bytes past this row's last pixel: inside the next
                // row or the slack. `w` is 32 bytes.
                unsafe {
                    let v = _mm_loadu_si128(row.add((s + 4 * g) * 3).cast::<__m128i>());
                    let v = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(v), mask);
                    let w = _mm256_loadu_si256(w.as_ptr().cast::<__m256i>());
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(v, w));
                }
            }
            _mm_srai_epi32::<{ BITS as i32 }>(_mm_add_epi32(
                _mm256_castsi256_si128(acc),
                _mm256_extracti128_si256::<1>(acc),
            ))
        };
        let base = src.as_ptr();
        for (r, out_row) in dst.chunks_exact_mut(out_w * 3).take(rows).enumerate() {
            // SAFETY: r < rows, and src holds rows * stride bytes plus slack.
            let row = unsafe { base.add(r * stride) };
            let mut x = 0;
            // Four pixels at a time, packed together; the 16-byte store needs 4 bytes
            // of room past them, so the row's last pixels go one by one.
            while (x + 4) * 3 + 4 <= out_row.len() {
                let p01 = _mm_packs_epi32(pixel(row, x), pixel(row, x + 1));
                let p23 = _mm_packs_epi32(pixel(row, x + 2), pixel(row, x + 3));
                let v = _mm_shuffle_epi8(_mm_packus_epi16(p01, p23), compact);
                // SAFETY: bytes 3x .. 3x + 16 are inside out_row (loop condition);
                // the last 4 are rewritten by the next pixels.
                unsafe { _mm_storeu_si128(out_row.as_mut_ptr().add(3 * x).cast::<__m128i>(), v) };
                x += 4;
            }
            while x < out_w {
                let v = _mm_packs_epi32(pixel(row, x), pixel(row, x));
                let px = (_mm_cvtsi128_si32(_mm_packus_epi16(v, v)) as u32).to_le_bytes();
                out_row[3 * x..3 * x + 3].copy_from_slice(&px[..3]);
                x += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(width: usize, rows: usize, seed: u32) -> Vec<u8> {
        let mut s = seed | 1;
        let mut v: Vec<u8> = (0..width * rows * 3)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 24) as u8
            })
            .collect();
        v.resize(v.len() + Plan::SLACK, 0);
        v
    }

    /// Every filter, downscales and upscales, fractional boxes and right-edge windows:
    /// the SIMD kernel equals the scalar one byte for byte.
    #[test]
    fn simd_matches_scalar() {
        let filters = [
            Filter::Bilinear,
            Filter::Hamming,
            Filter::CatmullRom,
            Filter::Lanczos3,
        ];
        let geometries = [
            (500u32, 62.5f64, 375.0f64, 256u32),
            (640, 80.0, 480.0, 256),
            (375, 0.0, 375.0, 256),
            (1600, 200.0, 1200.0, 256),
            (100, 0.0, 100.0, 256),
            (257, 0.5, 256.0, 256),
            (40, 3.0, 31.0, 7),
        ];
        let mut plan = Plan::default();
        let mut groups = std::collections::BTreeSet::new();
        for filter in filters {
            for (i, &(in_size, box0, len, out)) in geometries.iter().enumerate() {
                assert!(
                    plan.build_any_cpu(filter, in_size, box0, len, out),
                    "{filter:?} {i}"
                );
                groups.insert(plan.taps / 4);
                let w = plan.width as usize;
                let rows = 3;
                let src = source(w, rows, i as u32 + 7);
                let mut a = vec![0u8; rows * out as usize * 3];
                let mut b = a.clone();
                if !Plan::simd() {
                    eprintln!("no AVX2 here: the SIMD kernel is not run");
                    return;
                }
                plan.run(&src, rows, &mut a);
                plan.run_scalar(&src, rows, &mut b);
                assert_eq!(a, b, "{filter:?} geometry {i}");
            }
        }
        // The unrolled one- and two-group kernels and the loop all ran.
        assert!(
            groups.contains(&1) && groups.contains(&2) && groups.range(3..).next().is_some(),
            "{groups:?}"
        );
    }

    /// Flat rows stay exactly flat (the fixed-point weights sum to one), and each
    /// output pixel's weights sum to one whatever the window.
    #[test]
    fn flat_stays_flat_and_weights_sum_to_one() {
        let mut plan = Plan::default();
        for filter in [Filter::Bilinear, Filter::Lanczos3] {
            assert!(plan.build_any_cpu(filter, 500, 62.5, 375.0, 256));
            for ws in plan.weights.chunks_exact(plan.taps) {
                assert_eq!(ws.iter().map(|&w| i32::from(w)).sum::<i32>(), ONE);
            }
            let w = plan.width as usize;
            for value in [0u8, 1, 128, 254, 255] {
                let mut src = vec![value; w * 2 * 3];
                src.resize(src.len() + Plan::SLACK, 0);
                let mut out = vec![0u8; 2 * 256 * 3];
                plan.run_scalar(&src, 2, &mut out);
                assert!(out.iter().all(|&v| v == value), "{filter:?} {value}");
                if Plan::simd() {
                    plan.run(&src, 2, &mut out);
                }
                assert!(out.iter().all(|&v| v == value), "{filter:?} {value}");
            }
        }
    }

    /// The windows are PIL's: a 2:1 bilinear downscale of the box [10, 30) gives
    /// output 0 (centre 11, support 2) columns 9-12 with weights 1/8, 3/8, 3/8, 1/8
    /// (in 14-bit).
    #[test]
    fn bilinear_windows_are_pils() {
        let mut plan = Plan::default();
        assert!(plan.build_any_cpu(Filter::Bilinear, 40, 10.0, 20.0, 10));
        assert_eq!(plan.first, 9);
        let ws = &plan.weights[..plan.taps];
        let start = plan.starts[0] as usize + plan.first as usize;
        let nonzero: Vec<(usize, i16)> = ws
            .iter()
            .enumerate()
            .filter(|(_, w)| **w != 0)
            .map(|(k, &w)| (start + k, w))
            .collect();
        assert_eq!(nonzero, vec![(9, 2048), (10, 6144), (11, 6144), (12, 2048)]);
    }

    /// A source narrower than the padded window is refused (the caller falls back).
    #[test]
    fn tiny_sources_are_refused() {
        let mut plan = Plan::default();
        assert!(!plan.build_any_cpu(Filter::Bilinear, 3, 0.0, 3.0, 256));
        assert!(!plan.build_any_cpu(Filter::Lanczos3, 3, 0.0, 3.0, 1));
    }
}
