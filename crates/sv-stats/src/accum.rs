//! Exact, mergeable accumulators over `side x side x 3` HWC RGB u8 images.
//!
//! Every sum is an integer, so the result does not depend on the order images are
//! added or partial accumulators merged: integer addition is associative, and the
//! conversion to floating point happens once, at the end ([`crate::moments`]).
//!
//! # Bounds that keep the integers exact
//!
//! - Per-element (mean image) sums go first into `u16` lanes, which hold 257 images
//!   (257 x 255 = 65,535), and are then flushed into `u64` totals.
//! - The six distinct products of the covariance (RR, GG, BB, RG, RB, GB) go into
//!   32-bit lanes, flushed into `u64` totals well before they could overflow (each
//!   product is at most 255 x 255 = 65,025). The `u64` totals hold
//!   `u64::MAX / 65,025` pixels: 4.3 billion 256x256 images; past that
//!   [`Accumulator::add_image`] returns [`StatsError::Limit`].
//!
//! # Why the loop has this shape
//!
//! The pass should be bound by memory bandwidth, so the inner loop must run in SIMD
//! registers. Pixels are interleaved (R G B R G B ...); blocks of 48 bytes (16
//! pixels) are split into R, G and B vectors, and each product is summed lane-wise.
//! On x86-64 with AVX2 (checked at run time) this is done with byte shuffles and
//! `vpmaddwd`; elsewhere plain Rust over fixed-size arrays, which the compiler
//! vectorises for the baseline target. Both give the same exact integers (a test
//! checks the two paths against each other). The last pixels of an image that do not
//! fill a block are added one at a time.

use crate::StatsError;

/// Index of each distinct covariance product in [`Totals::products`].
pub mod product {
    /// Sum of R x R.
    pub const RR: usize = 0;
    /// Sum of G x G.
    pub const GG: usize = 1;
    /// Sum of B x B.
    pub const BB: usize = 2;
    /// Sum of R x G.
    pub const RG: usize = 3;
    /// Sum of R x B.
    pub const RB: usize = 4;
    /// Sum of G x B.
    pub const GB: usize = 5;
    /// `INDEX[c][d]`: where the product of channels `c` and `d` is kept.
    pub const INDEX: [[usize; 3]; 3] = [[RR, RG, RB], [RG, GG, GB], [RB, GB, BB]];
}

/// Images a `u16` lane holds before it must be flushed: 257 x 255 = 65,535.
const LANE_IMAGES: u32 = (u16::MAX / 255) as u32;
/// Largest pixel count whose product sums fit in `u64`.
const MAX_PIXELS: u64 = u64::MAX / (255 * 255);

/// Exact sums over a set of images: everything the mean image, the channel moments
/// and the RGB covariance need.
#[derive(Clone, Debug)]
pub struct Accumulator {
    side: u32,
    images: u64,
    /// Images added to `lanes` since they were last flushed into `sums`.
    pending: u32,
    /// Recent per-element sums, HWC order.
    lanes: Vec<u16>,
    /// Per-element sums, HWC order (without `lanes`).
    sums: Vec<u64>,
    /// The six distinct products, indexed by [`product`].
    products: [u64; 6],
}

/// The scalar totals of an accumulator: counts, channel sums and products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Image side.
    pub side: u32,
    /// Images added.
    pub images: u64,
    /// Pixels added (per channel): `images x side x side`.
    pub pixels: u64,
    /// Sum of each channel (R, G, B) over every pixel.
    pub channel_sums: [u64; 3],
    /// Sums of the six distinct channel products, indexed by [`product`].
    pub products: [u64; 6],
}

impl Accumulator {
    /// An empty accumulator for `side x side x 3` images.
    pub fn new(side: u32) -> Result<Accumulator, StatsError> {
        if side == 0 {
            return Err(StatsError::InvalidInput(
                "image side must be positive".into(),
            ));
        }
        let len = (side as usize)
            .checked_mul(side as usize)
            .and_then(|p| p.checked_mul(3))
            .ok_or_else(|| StatsError::Limit(format!("a {side}x{side} image is too large")))?;
        Ok(Accumulator {
            side,
            images: 0,
            pending: 0,
            lanes: vec![0; len],
            sums: vec![0; len],
            products: [0; 6],
        })
    }

    /// Image side.
    pub fn side(&self) -> u32 {
        self.side
    }

    /// Bytes of one image.
    pub fn image_bytes(&self) -> usize {
        self.sums.len()
    }

    /// Images added so far.
    pub fn images(&self) -> u64 {
        self.images
    }

    fn pixels_per_image(&self) -> u64 {
        u64::from(self.side) * u64::from(self.side)
    }

    /// Add one image: `side x side x 3` bytes, HWC interleaved RGB.
    pub fn add_image(&mut self, pixels: &[u8]) -> Result<(), StatsError> {
        if pixels.len() != self.sums.len() {
            return Err(StatsError::ImageSize {
                side: self.side,
                expected: self.sums.len(),
                found: pixels.len(),
            });
        }
        let after = (self.images + 1)
            .checked_mul(self.pixels_per_image())
            .filter(|&p| p <= MAX_PIXELS);
        if after.is_none() {
            return Err(StatsError::Limit(format!(
                "more than {MAX_PIXELS} pixels would overflow the exact product sums"
            )));
        }
        if self.pending == LANE_IMAGES {
            self.flush_lanes();
        }
        kernel::add(&mut self.lanes, pixels, &mut self.products);
        self.pending += 1;
        self.images += 1;
        Ok(())
    }

    fn flush_lanes(&mut self) {
        for (s, l) in self.sums.iter_mut().zip(self.lanes.iter_mut()) {
            *s += u64::from(*l);
            *l = 0;
        }
        self.pending = 0;
    }

    /// Add everything `other` holds, as if its images had been added here.
    pub fn merge(&mut self, other: &Accumulator) -> Result<(), StatsError> {
        if other.side != self.side {
            return Err(StatsError::GeometryMismatch {
                left: self.side,
                right: other.side,
            });
        }
        let images = self.images + other.images;
        if images
            .checked_mul(self.pixels_per_image())
            .is_none_or(|p| p > MAX_PIXELS)
        {
            return Err(StatsError::Limit(format!(
                "more than {MAX_PIXELS} pixels would overflow the exact product sums"
            )));
        }
        for ((s, o), l) in self.sums.iter_mut().zip(&other.sums).zip(&other.lanes) {
            *s += *o + u64::from(*l);
        }
        for (p, o) in self.products.iter_mut().zip(&other.products) {
            *p += *o;
        }
        self.images = images;
        Ok(())
    }

    /// Per-element sums over every image added, HWC order (`side x side x 3`).
    pub fn element_sums(&self) -> Vec<u64> {
        self.sums
            .iter()
            .zip(&self.lanes)
            .map(|(s, l)| s + u64::from(*l))
            .collect()
    }

    /// Counts, channel sums and products.
    pub fn totals(&self) -> Totals {
        let mut channel_sums = [0u64; 3];
        for (px_sums, px_lanes) in self.sums.chunks_exact(3).zip(self.lanes.chunks_exact(3)) {
            for c in 0..3 {
                channel_sums[c] += px_sums[c] + u64::from(px_lanes[c]);
            }
        }
        Totals {
            side: self.side,
            images: self.images,
            pixels: self.images * self.pixels_per_image(),
            channel_sums,
            products: self.products,
        }
    }

    /// The mean image as `f64`, CHW order (`3 x side x side`), on the 0-255 scale.
    /// `None` when no image was added.
    pub fn mean_image_chw(&self) -> Option<Vec<f64>> {
        if self.images == 0 {
            return None;
        }
        let n = self.images as f64;
        let plane = self.pixels_per_image() as usize;
        let mut out = vec![0.0; plane * 3];
        for (p, (s, l)) in self
            .sums
            .chunks_exact(3)
            .zip(self.lanes.chunks_exact(3))
            .enumerate()
        {
            for c in 0..3 {
                out[c * plane + p] = (s[c] + u64::from(l[c])) as f64 / n;
            }
        }
        Some(out)
    }
}

/// The inner loop: blocks of 16 pixels, then the last few pixels one at a time.
mod kernel {
    use super::product;

    /// Add `px` into the mean-image lanes and its channel products into `products`.
    pub(super) fn add(lanes: &mut [u16], px: &[u8], products: &mut [u64; 6]) {
        let n = px.len().min(lanes.len());
        let (lanes, px) = (&mut lanes[..n], &px[..n]);
        let done = blocks(lanes, px, products);
        for (l, &p) in lanes[done..].iter_mut().zip(&px[done..]) {
            *l = l.wrapping_add(u16::from(p));
        }
        for p in px[done..].chunks_exact(3) {
            let (r, g, b) = (u64::from(p[0]), u64::from(p[1]), u64::from(p[2]));
            products[product::RR] += r * r;
            products[product::GG] += g * g;
            products[product::BB] += b * b;
            products[product::RG] += r * g;
            products[product::RB] += r * b;
            products[product::GB] += g * b;
        }
    }

    /// Whole 48-byte blocks, by the fastest path this CPU has; returns the bytes done.
    fn blocks(lanes: &mut [u16], px: &[u8], products: &mut [u64; 6]) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked on the line above.
                return unsafe { avx2::blocks(lanes, px, products) };
            }
        }
        portable::blocks(lanes, px, products)
    }

    /// Plain Rust over fixed-size arrays, which the compiler vectorises for the
    /// baseline target: pixels are split into R, G, B arrays of 16, then each product
    /// goes into 16 `u32` lanes.
    pub(super) mod portable {
        /// Blocks a `u32` lane absorbs (at most 65,025 each) before it is flushed.
        const FLUSH_BLOCKS: usize = 32_768;

        pub(crate) fn blocks(lanes: &mut [u16], px: &[u8], products: &mut [u64; 6]) -> usize {
            let mut acc = [[0u32; 16]; 6];
            let mut done = 0;
            let mut since_flush = 0;
            for (block, lane) in px.chunks_exact(48).zip(lanes.chunks_exact_mut(48)) {
                for (l, &b) in lane.iter_mut().zip(block) {
                    *l = l.wrapping_add(u16::from(b));
                }
                let (mut r, mut g, mut b) = ([0u16; 16], [0u16; 16], [0u16; 16]);
                for (k, p) in block.chunks_exact(3).enumerate() {
                    r[k] = u16::from(p[0]);
                    g[k] = u16::from(p[1]);
                    b[k] = u16::from(p[2]);
                }
                // Each product is at most 255 x 255 = 65,025: it fits u16.
                for k in 0..16 {
                    acc[0][k] = acc[0][k].wrapping_add(u32::from(r[k] * r[k]));
                    acc[1][k] = acc[1][k].wrapping_add(u32::from(g[k] * g[k]));
                    acc[2][k] = acc[2][k].wrapping_add(u32::from(b[k] * b[k]));
                    acc[3][k] = acc[3][k].wrapping_add(u32::from(r[k] * g[k]));
                    acc[4][k] = acc[4][k].wrapping_add(u32::from(r[k] * b[k]));
                    acc[5][k] = acc[5][k].wrapping_add(u32::from(g[k] * b[k]));
                }
                done += 48;
                since_flush += 1;
                if since_flush == FLUSH_BLOCKS {
                    flush(&mut acc, products);
                    since_flush = 0;
                }
            }
            flush(&mut acc, products);
            done
        }

        fn flush(acc: &mut [[u32; 16]; 6], products: &mut [u64; 6]) {
            // acc follows the order of `product` (RR, GG, BB, RG, RB, GB).
            for (p, a) in products.iter_mut().zip(acc.iter_mut()) {
                *p += a.iter().map(|&x| u64::from(x)).sum::<u64>();
                *a = [0; 16];
            }
        }
    }

    /// AVX2: three 16-byte loads are split into R, G, B vectors with byte shuffles,
    /// widened to 16 x u16, and `vpmaddwd` multiplies and adds pixel pairs of the
    /// same channels into 8 x i32 lanes per product.
    #[cfg(target_arch = "x86_64")]
    pub(super) mod avx2 {
        use std::arch::x86_64::*;

        /// Blocks an i32 lane absorbs (at most 2 x 65,025 each) before it is flushed.
        const FLUSH_BLOCKS: usize = 16_384;
        /// `pshufb` index that zeroes the output byte.
        const Z: i8 = -128;

        fn mask(i: [i8; 16]) -> __m128i {
            // SAFETY: SSE2 is part of the x86-64 baseline.
            unsafe {
                _mm_setr_epi8(
                    i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7], i[8], i[9], i[10], i[11],
                    i[12], i[13], i[14], i[15],
                )
            }
        }

        #[target_feature(enable = "avx2")]
        fn flush(acc: &mut [__m256i; 6], products: &mut [u64; 6]) {
            // acc follows the order of `product` (RR, GG, BB, RG, RB, GB).
            for (p, a) in products.iter_mut().zip(acc.iter_mut()) {
                let mut lanes = [0u32; 8];
                // SAFETY: `lanes` is 32 bytes, the size of one unaligned store.
                unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *a) };
                *p += lanes.iter().map(|&x| u64::from(x)).sum::<u64>();
                *a = _mm256_setzero_si256();
            }
        }

        /// # Safety
        ///
        /// The CPU must support AVX2.
        #[target_feature(enable = "avx2")]
        pub(crate) unsafe fn blocks(
            lanes: &mut [u16],
            px: &[u8],
            products: &mut [u64; 6],
        ) -> usize {
            // Bytes of a 48-byte block: a = px[0..16], b = px[16..32], c = px[32..48];
            // pixel k's red is byte 3k, which lies in a for k < 6, b for k < 11, c after.
            let r_a = mask([0, 3, 6, 9, 12, 15, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z]);
            let r_b = mask([Z, Z, Z, Z, Z, Z, 2, 5, 8, 11, 14, Z, Z, Z, Z, Z]);
            let r_c = mask([Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, 1, 4, 7, 10, 13]);
            let g_a = mask([1, 4, 7, 10, 13, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z]);
            let g_b = mask([Z, Z, Z, Z, Z, 0, 3, 6, 9, 12, 15, Z, Z, Z, Z, Z]);
            let g_c = mask([Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, 2, 5, 8, 11, 14]);
            let b_a = mask([2, 5, 8, 11, 14, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, Z]);
            let b_b = mask([Z, Z, Z, Z, Z, 1, 4, 7, 10, 13, Z, Z, Z, Z, Z, Z]);
            let b_c = mask([Z, Z, Z, Z, Z, Z, Z, Z, Z, Z, 0, 3, 6, 9, 12, 15]);
            let pick = |a, b, c, ma, mb, mc| {
                _mm_or_si128(
                    _mm_or_si128(_mm_shuffle_epi8(a, ma), _mm_shuffle_epi8(b, mb)),
                    _mm_shuffle_epi8(c, mc),
                )
            };
            let mut acc = [_mm256_setzero_si256(); 6];
            let mut done = 0;
            let mut since_flush = 0;
            for (block, lane) in px.chunks_exact(48).zip(lanes.chunks_exact_mut(48)) {
                let src = block.as_ptr();
                let dst = lane.as_mut_ptr();
                // SAFETY: `block` is 48 bytes and `lane` 48 u16 (96 bytes); the loads
                // read src[0..48], the stores write dst[0..48], all unaligned.
                let (a, b, c) = unsafe {
                    let a = _mm_loadu_si128(src.cast());
                    let b = _mm_loadu_si128(src.add(16).cast());
                    let c = _mm_loadu_si128(src.add(32).cast());
                    for (k, v) in [a, b, c].into_iter().enumerate() {
                        let at = dst.add(16 * k).cast::<__m256i>();
                        let sum = _mm256_add_epi16(_mm256_loadu_si256(at), _mm256_cvtepu8_epi16(v));
                        _mm256_storeu_si256(at, sum);
                    }
                    (a, b, c)
                };
                let r = _mm256_cvtepu8_epi16(pick(a, b, c, r_a, r_b, r_c));
                let g = _mm256_cvtepu8_epi16(pick(a, b, c, g_a, g_b, g_c));
                let bl = _mm256_cvtepu8_epi16(pick(a, b, c, b_a, b_b, b_c));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(r, r));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(g, g));
                acc[2] = _mm256_add_epi32(acc[2], _mm256_madd_epi16(bl, bl));
                acc[3] = _mm256_add_epi32(acc[3], _mm256_madd_epi16(r, g));
                acc[4] = _mm256_add_epi32(acc[4], _mm256_madd_epi16(r, bl));
                acc[5] = _mm256_add_epi32(acc[5], _mm256_madd_epi16(g, bl));
                done += 48;
                since_flush += 1;
                if since_flush == FLUSH_BLOCKS {
                    flush(&mut acc, products);
                    since_flush = 0;
                }
            }
            flush(&mut acc, products);
            done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), no dependency.
    pub(crate) fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn naive(images: &[Vec<u8>], side: u32) -> (Vec<u64>, [u64; 3], [u64; 6]) {
        let mut sums = vec![
            0u64;
            images
                .first()
                .map_or(0, Vec::len)
                .max((side * side * 3) as usize)
        ];
        let mut ch = [0u64; 3];
        let mut prod = [0u64; 6];
        for img in images {
            for (s, &b) in sums.iter_mut().zip(img) {
                *s += u64::from(b);
            }
            for p in img.chunks_exact(3) {
                for c in 0..3 {
                    ch[c] += u64::from(p[c]);
                    for d in c..3 {
                        prod[product::INDEX[c][d]] += u64::from(p[c]) * u64::from(p[d]);
                    }
                }
            }
        }
        (sums, ch, prod)
    }

    #[test]
    fn matches_naive_sums_for_many_sides() {
        for side in [1u32, 2, 3, 4, 5, 7, 16, 17, 33] {
            let images: Vec<Vec<u8>> = (0..5)
                .map(|i| bytes(u64::from(side) * 31 + i, (side * side * 3) as usize))
                .collect();
            let mut acc = Accumulator::new(side).unwrap();
            for img in &images {
                acc.add_image(img).unwrap();
            }
            let (sums, ch, prod) = naive(&images, side);
            let t = acc.totals();
            assert_eq!(acc.element_sums(), sums, "side {side}");
            assert_eq!(t.channel_sums, ch, "side {side}");
            assert_eq!(t.products, prod, "side {side}");
            assert_eq!(t.images, 5);
            assert_eq!(t.pixels, 5 * u64::from(side * side));
        }
    }

    #[test]
    fn saturated_images_do_not_overflow_lanes() {
        // 600 white 256x256 images: crosses the u16 lane flush (257) twice and puts
        // the largest possible value through every product lane.
        let side = 256;
        let img = vec![255u8; side * side * 3];
        let mut acc = Accumulator::new(side as u32).unwrap();
        for _ in 0..600 {
            acc.add_image(&img).unwrap();
        }
        let t = acc.totals();
        let pixels = 600 * (side * side) as u64;
        assert_eq!(t.pixels, pixels);
        assert_eq!(t.channel_sums, [255 * pixels; 3]);
        assert_eq!(t.products, [65_025 * pixels; 6]);
        assert!(acc.element_sums().iter().all(|&s| s == 255 * 600));
    }

    #[test]
    fn product_lanes_flush_before_overflow() {
        // One image with more blocks than either path's flush interval (65,536),
        // every product at its largest.
        let side = 1024u32; // 1024*1024*3 / 48 = 65,536 blocks
        let img = vec![255u8; (side * side * 3) as usize];
        let mut acc = Accumulator::new(side).unwrap();
        acc.add_image(&img).unwrap();
        let px = u64::from(side * side);
        assert_eq!(acc.totals().products, [65_025 * px; 6]);
    }

    #[test]
    fn simd_and_portable_paths_agree() {
        for len in [0usize, 48, 96, 480, 196_608, 48 * 40_000] {
            let px = bytes(len as u64 + 5, len);
            let mut lanes_p = bytes(7, len)
                .iter()
                .map(|&b| u16::from(b))
                .collect::<Vec<_>>();
            let mut prod_p = [3u64; 6];
            let done = kernel::portable::blocks(&mut lanes_p, &px, &mut prod_p);
            assert_eq!(done, len);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                let mut lanes_a = bytes(7, len)
                    .iter()
                    .map(|&b| u16::from(b))
                    .collect::<Vec<_>>();
                let mut prod_a = [3u64; 6];
                // SAFETY: AVX2 support was checked above.
                let done = unsafe { kernel::avx2::blocks(&mut lanes_a, &px, &mut prod_a) };
                assert_eq!(done, len);
                assert_eq!(prod_a, prod_p, "len {len}");
                assert_eq!(lanes_a, lanes_p, "len {len}");
            }
            let (_, _, naive_prod) = naive(std::slice::from_ref(&px), 0);
            let want: Vec<u64> = naive_prod.iter().map(|p| p + 3).collect();
            assert_eq!(prod_p.to_vec(), want, "len {len}");
        }
    }

    #[test]
    fn rejects_wrong_sizes_and_geometry() {
        let mut acc = Accumulator::new(4).unwrap();
        let err = acc.add_image(&[0u8; 47]).unwrap_err();
        assert!(err.to_string().contains("47 bytes, expected 48"), "{err}");
        let other = Accumulator::new(5).unwrap();
        let err = acc.merge(&other).unwrap_err();
        assert!(err.to_string().contains("4x4") && err.to_string().contains("5x5"));
        assert!(Accumulator::new(0).is_err());
    }

    #[test]
    fn mean_image_is_chw() {
        let mut acc = Accumulator::new(2).unwrap();
        assert!(acc.mean_image_chw().is_none());
        // pixel p has (R, G, B) = (p, 10 + p, 20 + p)
        let img: Vec<u8> = (0..4u8).flat_map(|p| [p, 10 + p, 20 + p]).collect();
        acc.add_image(&img).unwrap();
        acc.add_image(&img.iter().map(|v| v + 1).collect::<Vec<_>>())
            .unwrap();
        let m = acc.mean_image_chw().unwrap();
        assert_eq!(
            m,
            vec![
                0.5, 1.5, 2.5, 3.5, 10.5, 11.5, 12.5, 13.5, 20.5, 21.5, 22.5, 23.5
            ]
        );
    }
}
