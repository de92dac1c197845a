//! The copy loops: crop (+ mirror) into uint8 HWC/CHW, and crop + lighting +
//! normalisation into float32 CHW. Each checks its buffer sizes once, then runs
//! bounds-check-free inner loops over exact-length row slices so they vectorise.

use crate::{AugmentError, Window};

/// Memory order of one output image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Layout {
    /// Height, width, channel (interleaved RGB, the stored order): a crop is a row
    /// `memcpy`.
    #[default]
    Hwc,
    /// Channel, height, width (planar, what convolution layers take).
    Chw,
}

/// The mean subtracted before dividing by the std, on the 0-255 scale.
#[derive(Clone, Debug, PartialEq)]
pub enum Mean {
    /// One mean per channel (R, G, B).
    Channel([f32; 3]),
    /// A per-pixel mean image, `side x side x 3` HWC, indexed at each output value's
    /// source position (Caffe's `compute_image_mean`).
    Image(Vec<f32>),
}

/// Mean subtraction and std division for the float output, on the 0-255 scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// Subtracted first.
    pub mean: Mean,
    /// Divided by after subtracting the mean; must be positive.
    pub std: [f32; 3],
}

impl Default for Normalize {
    fn default() -> Self {
        Normalize::imagenet()
    }
}

impl Normalize {
    /// torchvision's ImageNet statistics (mean 0.485/0.456/0.406, std
    /// 0.229/0.224/0.225 of `[0, 1]` pixels), scaled to 0-255.
    pub fn imagenet() -> Normalize {
        Normalize {
            mean: Mean::Channel([0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0]),
            std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
        }
    }

    /// Mean subtraction only (std 1), as the paper did.
    pub fn mean_only(mean: Mean) -> Normalize {
        Normalize {
            mean,
            std: [1.0; 3],
        }
    }

    /// Check the settings for images of `side`: positive finite std, a mean image of
    /// `side * side * 3` values.
    pub fn validate(&self, side: u32) -> Result<(), AugmentError> {
        if !self.std.iter().all(|&s| s.is_finite() && s > 0.0) {
            return Err(AugmentError::Config(format!(
                "normalisation std must be positive and finite, got {:?}",
                self.std
            )));
        }
        match &self.mean {
            Mean::Channel(m) if !m.iter().all(|v| v.is_finite()) => Err(AugmentError::Config(
                format!("channel mean must be finite, got {m:?}"),
            )),
            Mean::Channel(_) => Ok(()),
            Mean::Image(img) => {
                let expected = image_len(side);
                if img.len() != expected {
                    Err(AugmentError::Size {
                        what: "mean image",
                        expected,
                        found: img.len(),
                    })
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn image_len(side: u32) -> usize {
    side as usize * side as usize * 3
}

fn check(
    src_len: usize,
    dst_len: usize,
    side: u32,
    crop: u32,
    w: Window,
) -> Result<(), AugmentError> {
    let expected = image_len(side);
    if src_len != expected {
        return Err(AugmentError::Size {
            what: "source image",
            expected,
            found: src_len,
        });
    }
    let fits = |o: u32| o.checked_add(crop).is_some_and(|end| end <= side);
    if crop == 0 || !fits(w.x) || !fits(w.y) {
        return Err(AugmentError::Window {
            x: w.x,
            y: w.y,
            crop,
            side,
        });
    }
    let expected = image_len(crop);
    if dst_len != expected {
        return Err(AugmentError::Size {
            what: "destination",
            expected,
            found: dst_len,
        });
    }
    Ok(())
}

/// Byte range of crop row `r` in a `side` HWC image (checked by [`check`]).
#[inline]
fn row_range(side: u32, crop: u32, w: Window, r: usize) -> std::ops::Range<usize> {
    let start = ((w.y as usize + r) * side as usize + w.x as usize) * 3;
    start..start + crop as usize * 3
}

/// Copy the `crop x crop` window `w` of `src` (`side x side x 3` HWC) into `dst`
/// (`crop * crop * 3` values in `layout`), mirrored when `w.flip`.
pub fn crop_u8(
    src: &[u8],
    side: u32,
    crop: u32,
    w: Window,
    layout: Layout,
    dst: &mut [u8],
) -> Result<(), AugmentError> {
    check(src.len(), dst.len(), side, crop, w)?;
    let c = crop as usize;
    match layout {
        Layout::Hwc => {
            for (r, out) in dst.chunks_exact_mut(c * 3).enumerate() {
                let row = &src[row_range(side, crop, w, r)];
                if w.flip {
                    flip_row(row, out);
                } else {
                    out.copy_from_slice(row);
                }
            }
        }
        Layout::Chw => {
            let (p0, rest) = dst.split_at_mut(c * c);
            let (p1, p2) = rest.split_at_mut(c * c);
            let planes = p0
                .chunks_exact_mut(c)
                .zip(p1.chunks_exact_mut(c))
                .zip(p2.chunks_exact_mut(c));
            for (r, ((o0, o1), o2)) in planes.enumerate() {
                let row = &src[row_range(side, crop, w, r)];
                planar_row(row, w.flip, o0, o1, o2);
            }
        }
    }
    Ok(())
}

/// Reversed pixel copy: output pixel `j` is input pixel `n - 1 - j`, for `n` RGB
/// pixels (`row` and `out` both `3n` bytes). On x86-64 with SSSE3 (every x86-64 CPU
/// since 2006) five pixels move per byte shuffle; elsewhere a pixel at a time.
#[inline]
fn flip_row(row: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3, checked just above.
        unsafe { x86::flip_row_ssse3(row, out) };
        return;
    }
    flip_row_scalar(row, out, 0);
}

/// Scalar reversed copy of output pixels `from..n` (see [`flip_row`]).
#[inline]
fn flip_row_scalar(row: &[u8], out: &mut [u8], from: usize) {
    let n = out.len() / 3;
    let row = &row[..3 * (n - from)];
    for (o, i) in out[3 * from..]
        .chunks_exact_mut(3)
        .zip(row.rchunks_exact(3))
    {
        o.copy_from_slice(i);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_or_si128, _mm_setr_epi8, _mm_shuffle_epi8, _mm_srli_si128,
        _mm_storeu_si128, _mm256_add_ps, _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32, _mm256_mul_ps,
        _mm256_set1_ps, _mm256_storeu_ps,
    };

    /// [`super::flip_row`] five pixels per step, reading the source forwards. Step
    /// `m` (source pixels `m..m + 5`, output pixels `j..j + 5` with `j = n - 5 - m`)
    /// loads the 16 bytes at source pixel `m`, reverses the five pixels with one
    /// `pshufb` and stores 16 bytes starting one byte before output pixel `j`; that
    /// first byte is overwritten by the next step or the scalar head. Both the load
    /// and the store stay in bounds while `m + 6 <= n`.
    ///
    /// # Safety
    /// The CPU must support SSSE3.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn flip_row_ssse3(row: &[u8], out: &mut [u8]) {
        let n = out.len() / 3;
        assert!(
            row.len() >= 3 * n,
            "flip_row: source row shorter than output"
        );
        // loaded byte 3q + c is byte c of source pixel m + q, which goes to output
        // pixel j + 4 - q, stored byte 1 + 3(4 - q) + c: stored byte 1 + 3k + c =
        // loaded byte 3(4 - k) + c. Stored byte 0 (-1: zero) is a placeholder.
        let mask = _mm_setr_epi8(-1, 12, 13, 14, 9, 10, 11, 6, 7, 8, 3, 4, 5, 0, 1, 2);
        let mut m = 0;
        while m + 6 <= n {
            let j = n - 5 - m;
            // SAFETY: reads row[3m .. 3m + 16]: 3m + 16 <= 3(n - 6) + 16 < 3n <=
            // row.len(). Writes out[3j - 1 .. 3j + 15]: 3j - 1 >= 2 since j >= 1,
            // and 3j + 15 = 3(n - m) <= 3n = out.len(). Unaligned load/store.
            unsafe {
                let v = _mm_loadu_si128(row.as_ptr().add(3 * m).cast::<__m128i>());
                let r = _mm_shuffle_epi8(v, mask);
                _mm_storeu_si128(out.as_mut_ptr().add(3 * j - 1).cast::<__m128i>(), r);
            }
            m += 5;
        }
        // output pixels 0..n - m remain: source pixels m..n, reversed
        let rest = n - m;
        super::flip_row_scalar(&row[3 * m..3 * n], &mut out[..3 * rest], 0);
    }

    /// `pshufb` masks that gather channel `ch` of sixteen RGB pixels (48 bytes, read
    /// as three 16-byte vectors `v`) into one vector: byte `k` takes source byte
    /// `3k + ch`, or `3(15 - k) + ch` when mirrored, where that byte lies in vector
    /// `v`; -1 (zero) elsewhere, so OR-ing the three shuffles gives the channel.
    const fn gather_mask(flip: bool, ch: usize, v: usize) -> [i8; 16] {
        let mut m = [-1i8; 16];
        let mut k = 0;
        while k < 16 {
            let px = if flip { 15 - k } else { k };
            let t = 3 * px + ch;
            if t / 16 == v {
                m[k] = (t % 16) as i8;
            }
            k += 1;
        }
        m
    }

    const fn channel_masks(flip: bool) -> [[[i8; 16]; 3]; 3] {
        let mut out = [[[0i8; 16]; 3]; 3];
        let mut ch = 0;
        while ch < 3 {
            let mut v = 0;
            while v < 3 {
                out[ch][v] = gather_mask(flip, ch, v);
                v += 1;
            }
            ch += 1;
        }
        out
    }

    /// Indexed `[flip][channel][source vector]`.
    static MASKS: [[[[i8; 16]; 3]; 3]; 2] = [channel_masks(false), channel_masks(true)];

    /// The nine masks for one row, in registers.
    #[target_feature(enable = "ssse3")]
    fn load_masks(flip: bool) -> [[__m128i; 3]; 3] {
        MASKS[usize::from(flip)].map(|ch| {
            // SAFETY: each mask is 16 readable bytes; unaligned load.
            ch.map(|m| unsafe { _mm_loadu_si128(m.as_ptr().cast::<__m128i>()) })
        })
    }

    /// Channels R, G, B of the sixteen pixels at `p` (48 bytes), in pixel order or
    /// mirrored, as [`load_masks`] says.
    ///
    /// # Safety
    /// `p..p + 48` must be readable; the CPU must support SSSE3.
    #[target_feature(enable = "ssse3")]
    #[inline]
    unsafe fn gather16(p: *const u8, masks: &[[__m128i; 3]; 3]) -> [__m128i; 3] {
        // SAFETY: the caller guarantees 48 readable bytes at `p`.
        let v = unsafe {
            [
                _mm_loadu_si128(p.cast::<__m128i>()),
                _mm_loadu_si128(p.add(16).cast::<__m128i>()),
                _mm_loadu_si128(p.add(32).cast::<__m128i>()),
            ]
        };
        masks.map(|m| {
            _mm_or_si128(
                _mm_or_si128(_mm_shuffle_epi8(v[0], m[0]), _mm_shuffle_epi8(v[1], m[1])),
                _mm_shuffle_epi8(v[2], m[2]),
            )
        })
    }

    /// Walk output pixels `0..n` of a row sixteen at a time: `put(j, channels)` gets
    /// channels R, G, B of output pixels `j..j + 16` (source pixels `j..j + 16`, or
    /// `n - 16 - j..n - j` mirrored). Returns the first output pixel not covered
    /// (`n` rounded down to a multiple of 16); the caller finishes the row.
    ///
    /// # Panics
    /// If `row` holds fewer than `n` pixels.
    #[target_feature(enable = "ssse3")]
    #[inline]
    fn groups16(
        row: &[u8],
        n: usize,
        flip: bool,
        mut put: impl FnMut(usize, [__m128i; 3]),
    ) -> usize {
        assert!(row.len() >= 3 * n, "row shorter than {n} pixels");
        let masks = load_masks(flip);
        let mut j = 0;
        while j + 16 <= n {
            let s = if flip { n - 16 - j } else { j };
            // SAFETY: source bytes 3s..3s + 48 lie in the row since s + 16 <= n.
            put(j, unsafe { gather16(row.as_ptr().add(3 * s), &masks) });
            j += 16;
        }
        j
    }

    /// [`super::planar_row`] sixteen pixels per step, the rest scalar.
    ///
    /// # Safety
    /// The CPU must support SSSE3.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn planar_row_ssse3(
        row: &[u8],
        flip: bool,
        o0: &mut [u8],
        o1: &mut [u8],
        o2: &mut [u8],
    ) {
        let n = o0.len();
        assert!(o1.len() >= n && o2.len() >= n);
        let outs = [o0.as_mut_ptr(), o1.as_mut_ptr(), o2.as_mut_ptr()];
        let j = groups16(row, n, flip, |j, c| {
            for (o, v) in outs.into_iter().zip(c) {
                // SAFETY: writes o*[j..j + 16], in bounds since j + 16 <= n.
                unsafe { _mm_storeu_si128(o.add(j).cast::<__m128i>(), v) };
            }
        });
        let src = tail_source(row, n, j, flip);
        let (o0, o1, o2) = (&mut o0[j..n], &mut o1[j..n], &mut o2[j..n]);
        super::planar_row_scalar(src, flip, o0, o1, o2);
    }

    /// The source pixels of output pixels `j..n`: `j..n`, or mirrored `0..n - j`.
    fn tail_source(row: &[u8], n: usize, j: usize, flip: bool) -> &[u8] {
        if flip {
            &row[..3 * (n - j)]
        } else {
            &row[3 * j..3 * n]
        }
    }

    /// [`super::affine_row`] sixteen pixels per step (8 floats per AVX register),
    /// the rest scalar; the same multiply then add as the scalar code, so the same
    /// bits.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn affine_row_avx2(
        row: &[u8],
        flip: bool,
        scale: [f32; 3],
        bias: [f32; 3],
        o0: &mut [f32],
        o1: &mut [f32],
        o2: &mut [f32],
    ) {
        let n = o0.len();
        assert!(o1.len() >= n && o2.len() >= n);
        let sv = scale.map(|v| _mm256_set1_ps(v));
        let bv = bias.map(|v| _mm256_set1_ps(v));
        let outs = [o0.as_mut_ptr(), o1.as_mut_ptr(), o2.as_mut_ptr()];
        let j = groups16(row, n, flip, |j, c| {
            for k in 0..3 {
                let lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(c[k]));
                let hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(c[k])));
                let lo = _mm256_add_ps(_mm256_mul_ps(lo, sv[k]), bv[k]);
                let hi = _mm256_add_ps(_mm256_mul_ps(hi, sv[k]), bv[k]);
                // SAFETY: writes o*[j..j + 16], in bounds since j + 16 <= n.
                unsafe {
                    _mm256_storeu_ps(outs[k].add(j), lo);
                    _mm256_storeu_ps(outs[k].add(j + 8), hi);
                }
            }
        });
        let src = tail_source(row, n, j, flip);
        let (o0, o1, o2) = (&mut o0[j..n], &mut o1[j..n], &mut o2[j..n]);
        super::affine_row_scalar(src, flip, scale, bias, o0, o1, o2);
    }
}

/// De-interleave `n = o0.len()` RGB pixels of `row` (mirrored when `flip`) into
/// three channel rows. On x86-64 with SSSE3, sixteen pixels per step.
#[inline]
fn planar_row(row: &[u8], flip: bool, o0: &mut [u8], o1: &mut [u8], o2: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3, checked just above.
        unsafe { x86::planar_row_ssse3(row, flip, o0, o1, o2) };
        return;
    }
    planar_row_scalar(row, flip, o0, o1, o2);
}

#[inline]
fn planar_row_scalar(row: &[u8], flip: bool, o0: &mut [u8], o1: &mut [u8], o2: &mut [u8]) {
    let n = o0.len();
    // Exact lengths up front let the compiler drop the bounds checks below.
    let (row, o1, o2) = (&row[..3 * n], &mut o1[..n], &mut o2[..n]);
    for j in 0..n {
        let s = 3 * if flip { n - 1 - j } else { j };
        o0[j] = row[s];
        o1[j] = row[s + 1];
        o2[j] = row[s + 2];
    }
}

/// Crop window `w` of `src`, add the lighting offset `light` (grey levels, per
/// channel), normalise with `norm` and write `3 x crop x crop` float32 CHW into
/// `dst`: `dst[c][i][j] = (src + light[c] - mean[c]) / std[c]`.
pub fn crop_f32(
    src: &[u8],
    side: u32,
    crop: u32,
    w: Window,
    light: [f32; 3],
    norm: &Normalize,
    dst: &mut [f32],
) -> Result<(), AugmentError> {
    check(src.len(), dst.len(), side, crop, w)?;
    norm.validate(side)?;
    let c = crop as usize;
    let inv = norm.std.map(|s| 1.0 / s);
    let (p0, rest) = dst.split_at_mut(c * c);
    let (p1, p2) = rest.split_at_mut(c * c);
    let planes = p0
        .chunks_exact_mut(c)
        .zip(p1.chunks_exact_mut(c))
        .zip(p2.chunks_exact_mut(c));
    match &norm.mean {
        Mean::Channel(mean) => {
            // v * scale + bias == (v + light - mean) / std, one FMA-shaped op per value
            let bias = [0, 1, 2].map(|k| (light[k] - mean[k]) * inv[k]);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                for (r, ((o0, o1), o2)) in planes.enumerate() {
                    let row = &src[row_range(side, crop, w, r)];
                    // SAFETY: the CPU has AVX2 (and so SSSE3), checked just above.
                    unsafe { x86::affine_row_avx2(row, w.flip, inv, bias, o0, o1, o2) };
                }
                return Ok(());
            }
            for (r, ((o0, o1), o2)) in planes.enumerate() {
                let row = &src[row_range(side, crop, w, r)];
                affine_row_scalar(row, w.flip, inv, bias, o0, o1, o2);
            }
        }
        Mean::Image(mean) => {
            for (r, ((o0, o1), o2)) in planes.enumerate() {
                let range = row_range(side, crop, w, r);
                let row = &src[range.clone()];
                let mrow = &mean[range];
                if w.flip {
                    let px = row.chunks_exact(3).rev().zip(mrow.chunks_exact(3).rev());
                    mean_image_row(px, light, inv, o0, o1, o2);
                } else {
                    let px = row.chunks_exact(3).zip(mrow.chunks_exact(3));
                    mean_image_row(px, light, inv, o0, o1, o2);
                }
            }
        }
    }
    Ok(())
}

/// [`affine_row`] for a run-time flip flag.
#[inline]
fn affine_row_scalar(
    row: &[u8],
    flip: bool,
    scale: [f32; 3],
    bias: [f32; 3],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
) {
    if flip {
        affine_row::<true>(row, scale, bias, o0, o1, o2);
    } else {
        affine_row::<false>(row, scale, bias, o0, o1, o2);
    }
}

/// `n = o0.len()` pixels of `row` (mirrored when `FLIP`) to three float channel rows,
/// `value * scale + bias` (a multiply then an add, rounded twice: the SIMD path
/// computes exactly the same).
#[inline]
fn affine_row<const FLIP: bool>(
    row: &[u8],
    scale: [f32; 3],
    bias: [f32; 3],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
) {
    let n = o0.len();
    let (row, o1, o2) = (&row[..3 * n], &mut o1[..n], &mut o2[..n]);
    for j in 0..n {
        let s = 3 * if FLIP { n - 1 - j } else { j };
        o0[j] = f32::from(row[s]) * scale[0] + bias[0];
        o1[j] = f32::from(row[s + 1]) * scale[1] + bias[1];
        o2[j] = f32::from(row[s + 2]) * scale[2] + bias[2];
    }
}

#[inline]
fn mean_image_row<'a>(
    px: impl Iterator<Item = (&'a [u8], &'a [f32])>,
    light: [f32; 3],
    inv: [f32; 3],
    o0: &mut [f32],
    o1: &mut [f32],
    o2: &mut [f32],
) {
    for ((((p, m), a), b), c) in px.zip(o0.iter_mut()).zip(o1.iter_mut()).zip(o2.iter_mut()) {
        *a = (f32::from(p[0]) + light[0] - m[0]) * inv[0];
        *b = (f32::from(p[1]) + light[1] - m[1]) * inv[1];
        *c = (f32::from(p[2]) + light[2] - m[2]) * inv[2];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4x4 image whose value at (y, x, c) is 100*c + 10*y + x.
    fn image4() -> Vec<u8> {
        let mut v = Vec::new();
        for y in 0..4u8 {
            for x in 0..4u8 {
                for c in 0..3u8 {
                    v.push(100 * c + 10 * y + x);
                }
            }
        }
        v
    }

    fn win(x: u32, y: u32, flip: bool) -> Window {
        Window { x, y, flip }
    }

    #[test]
    fn crop_hwc_by_hand() {
        let img = image4();
        let mut out = [0u8; 2 * 2 * 3];
        crop_u8(&img, 4, 2, win(1, 2, false), Layout::Hwc, &mut out).unwrap();
        // rows y=2,3; columns x=1,2
        assert_eq!(
            out,
            [21, 121, 221, 22, 122, 222, 31, 131, 231, 32, 132, 232]
        );
        crop_u8(&img, 4, 2, win(1, 2, true), Layout::Hwc, &mut out).unwrap();
        assert_eq!(
            out,
            [22, 122, 222, 21, 121, 221, 32, 132, 232, 31, 131, 231]
        );
    }

    #[test]
    fn crop_chw_by_hand() {
        let img = image4();
        let mut out = [0u8; 3 * 3 * 3];
        crop_u8(&img, 4, 3, win(0, 1, true), Layout::Chw, &mut out).unwrap();
        // channel 0, rows 1..4, columns 2,1,0
        assert_eq!(&out[..9], &[12, 11, 10, 22, 21, 20, 32, 31, 30]);
        assert_eq!(&out[9..12], &[112, 111, 110]);
        assert_eq!(&out[18..21], &[212, 211, 210]);
    }

    #[test]
    fn f32_channel_mean_by_hand() {
        let img = image4();
        let norm = Normalize {
            mean: Mean::Channel([10.0, 100.0, 200.0]),
            std: [2.0, 4.0, 5.0],
        };
        let mut out = [0f32; 3 * 2 * 2];
        let light = [1.0, -2.0, 0.5];
        crop_f32(&img, 4, 2, win(2, 0, true), light, &norm, &mut out).unwrap();
        // source columns 3, 2 of rows 0, 1
        let want_c0 = [3.0, 2.0, 13.0, 12.0].map(|v: f32| (v + 1.0 - 10.0) / 2.0);
        let want_c1 = [103.0, 102.0, 113.0, 112.0].map(|v: f32| (v - 2.0 - 100.0) / 4.0);
        let want_c2 = [203.0, 202.0, 213.0, 212.0].map(|v: f32| (v + 0.5 - 200.0) / 5.0);
        for (got, want) in out
            .iter()
            .zip(want_c0.iter().chain(&want_c1).chain(&want_c2))
        {
            assert!((got - want).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn f32_mean_image_follows_the_source_position() {
        let img = image4();
        // mean image = the image itself minus 1: every output is (1 + light) / std
        let mean: Vec<f32> = img.iter().map(|&v| f32::from(v) - 1.0).collect();
        let norm = Normalize {
            mean: Mean::Image(mean),
            std: [1.0, 2.0, 4.0],
        };
        let mut out = [0f32; 3 * 3 * 3];
        crop_f32(
            &img,
            4,
            3,
            win(1, 1, true),
            [1.0, 1.0, 1.0],
            &norm,
            &mut out,
        )
        .unwrap();
        assert!(out[..9].iter().all(|&v| v == 2.0));
        assert!(out[9..18].iter().all(|&v| v == 1.0));
        assert!(out[18..].iter().all(|&v| v == 0.5));
    }

    #[test]
    fn bad_sizes_are_errors() {
        let img = image4();
        let mut out = [0u8; 12];
        assert!(matches!(
            crop_u8(&img[1..], 4, 2, win(0, 0, false), Layout::Hwc, &mut out),
            Err(AugmentError::Size {
                what: "source image",
                ..
            })
        ));
        assert!(matches!(
            crop_u8(&img, 4, 2, win(3, 0, false), Layout::Hwc, &mut out),
            Err(AugmentError::Window { .. })
        ));
        assert!(matches!(
            crop_u8(&img, 4, 2, win(0, 0, false), Layout::Hwc, &mut out[1..]),
            Err(AugmentError::Size {
                what: "destination",
                ..
            })
        ));
        let mut f = [0f32; 12];
        let bad = Normalize {
            mean: Mean::Image(vec![0.0; 5]),
            std: [1.0; 3],
        };
        assert!(crop_f32(&img, 4, 2, win(0, 0, false), [0.0; 3], &bad, &mut f).is_err());
        let zero_std = Normalize {
            mean: Mean::Channel([0.0; 3]),
            std: [1.0, 0.0, 1.0],
        };
        assert!(crop_f32(&img, 4, 2, win(0, 0, false), [0.0; 3], &zero_std, &mut f).is_err());
    }

    #[test]
    fn flipped_crops_match_a_naive_mirror() {
        let side = 9u32;
        let img: Vec<u8> = (0..side * side * 3).map(|i| (i * 7 % 256) as u8).collect();
        for crop in 1..=side {
            let w = win(side - crop, 0, true);
            let mut out = vec![0u8; (crop * crop * 3) as usize];
            crop_u8(&img, side, crop, w, Layout::Hwc, &mut out).unwrap();
            let c = crop as usize;
            for y in 0..c {
                for x in 0..c {
                    let sx = w.x as usize + c - 1 - x;
                    for ch in 0..3 {
                        let want = img[(y * side as usize + sx) * 3 + ch];
                        assert_eq!(out[(y * c + x) * 3 + ch], want, "crop {crop} ({x},{y})");
                    }
                }
            }
        }
    }

    /// Every row length around the 5-pixel SIMD step and its tail, at every column
    /// offset, against a pixel-by-pixel mirror (and the scalar path directly).
    #[test]
    fn mirrored_rows_match_the_scalar_copy_for_all_lengths() {
        let side = 40usize;
        let img: Vec<u8> = (0..side * 3).map(|i| (i * 37 % 251) as u8).collect();
        for n in 0..=side {
            for x in 0..=side - n {
                let row = &img[3 * x..3 * (x + n)];
                let want: Vec<u8> = row.chunks_exact(3).rev().flatten().copied().collect();
                let mut got = vec![0xAAu8; 3 * n];
                flip_row(row, &mut got);
                assert_eq!(got, want, "n {n} x {x}");
                let mut scalar = vec![0x55u8; 3 * n];
                flip_row_scalar(row, &mut scalar, 0);
                assert_eq!(scalar, want, "scalar n {n} x {x}");
            }
        }
    }

    /// The SIMD planar (CHW) rows, uint8 and float, against the scalar loops: every
    /// row length around the 16-pixel step, every offset, both directions; the float
    /// values must be bit-identical.
    #[test]
    fn planar_rows_match_the_scalar_loops_for_all_lengths() {
        let side = 50usize;
        let img: Vec<u8> = (0..side * 3).map(|i| (i * 53 % 256) as u8).collect();
        let (scale, bias) = ([1.0 / 58.4, 1.0 / 57.1, 1.0 / 57.4], [-2.1, -1.9, 0.37]);
        for n in 0..=side {
            for x in 0..=side - n {
                let row = &img[3 * x..3 * (x + n)];
                for flip in [false, true] {
                    let mut want = vec![vec![0u8; n]; 3];
                    let [w0, w1, w2] = &mut want[..] else {
                        unreachable!()
                    };
                    planar_row_scalar(row, flip, w0, w1, w2);
                    let mut got = vec![vec![0xAAu8; n]; 3];
                    let [g0, g1, g2] = &mut got[..] else {
                        unreachable!()
                    };
                    planar_row(row, flip, g0, g1, g2);
                    assert_eq!(got, want, "u8 n {n} x {x} flip {flip}");
                    // the scalar loop itself, against a direct reading
                    for (j, px) in (0..n).map(|j| (j, if flip { n - 1 - j } else { j })) {
                        assert_eq!(want[1][j], row[3 * px + 1]);
                    }

                    let mut fwant = vec![vec![0f32; n]; 3];
                    let [f0, f1, f2] = &mut fwant[..] else {
                        unreachable!()
                    };
                    affine_row_scalar(row, flip, scale, bias, f0, f1, f2);
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        let mut fgot = vec![vec![f32::NAN; n]; 3];
                        let [h0, h1, h2] = &mut fgot[..] else {
                            unreachable!()
                        };
                        // SAFETY: AVX2 checked just above.
                        unsafe { x86::affine_row_avx2(row, flip, scale, bias, h0, h1, h2) };
                        let bits = |v: &Vec<Vec<f32>>| -> Vec<u32> {
                            v.iter().flatten().map(|f| f.to_bits()).collect()
                        };
                        assert_eq!(bits(&fgot), bits(&fwant), "f32 n {n} x {x} flip {flip}");
                    }
                }
            }
        }
    }

    #[test]
    fn full_window_hwc_is_the_image() {
        let img = image4();
        let mut out = vec![0u8; img.len()];
        crop_u8(&img, 4, 4, win(0, 0, false), Layout::Hwc, &mut out).unwrap();
        assert_eq!(out, img);
    }
}
