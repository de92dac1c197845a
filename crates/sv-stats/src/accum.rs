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
//!   `u32` lanes for at most [`FLUSH_BLOCKS`] blocks of 16 pixels (each product is at
//!   most 255 x 255 = 65,025), then into `u64` totals. The `u64` totals hold
//!   `u64::MAX / 65,025` pixels: 4.3 billion 256x256 images; past that
//!   [`Accumulator::add_image`] returns [`StatsError::Limit`].
//!
//! # Why the loop has this shape
//!
//! The pass is bound by memory bandwidth, so the inner loop must run in SIMD
//! registers. Pixels are interleaved (R G B R G B ...), which defeats a per-channel
//! loop; instead the bytes are taken in blocks of 48 (16 pixels), and lane `j` of
//! three 48-lane accumulators collects `b[j]^2`, `b[j] * b[j+1]` and `b[j] * b[j+2]`.
//! Because 48 is a multiple of 3, lane `j` always holds channel `j % 3`, so after the
//! loop the lanes fold into the six products (lanes pairing a pixel's blue with the
//! next pixel's red are discarded). This is plain element-wise code over fixed-size
//! arrays, which the compiler vectorises; on x86-64 the same code is also compiled
//! for AVX2 and chosen at run time.

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
/// Bytes per product block: 16 pixels, a multiple of 3 so lane `j` is channel `j % 3`.
const BLOCK: usize = 48;
/// A block and the two bytes its shifted products look at.
const WINDOW: usize = BLOCK + 2;
/// Blocks per chunk: the mean-image lanes and the products read the same 3 KiB while
/// it is in L1.
const CHUNK_BLOCKS: usize = 64;
/// Blocks a `u32` product lane absorbs before it is flushed: 32,768 x 65,025 < 2^32.
pub const FLUSH_BLOCKS: usize = 32_768;
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

/// The inner loop, compiled for the baseline target and (on x86-64) for AVX2.
mod kernel {
    use super::{BLOCK, CHUNK_BLOCKS, FLUSH_BLOCKS, WINDOW, product};

    /// Add `px` into the mean-image lanes and its channel products into `products`.
    pub(super) fn add(lanes: &mut [u16], px: &[u8], products: &mut [u64; 6]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked on the line above.
                unsafe { add_avx2(lanes, px, products) };
                return;
            }
        }
        add_generic(lanes, px, products);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn add_avx2(lanes: &mut [u16], px: &[u8], products: &mut [u64; 6]) {
        add_generic(lanes, px, products);
    }

    /// Per-lane product sums of up to [`FLUSH_BLOCKS`] blocks.
    struct ProductLanes {
        sq: [u32; BLOCK],
        next1: [u32; BLOCK],
        next2: [u32; BLOCK],
    }

    impl ProductLanes {
        #[inline(always)]
        fn add_block(&mut self, w: &[u8; WINDOW]) {
            for j in 0..BLOCK {
                let x = u16::from(w[j]);
                // Each product is at most 65,025: it fits u16 before widening.
                self.sq[j] = self.sq[j].wrapping_add(u32::from(x * x));
                self.next1[j] = self.next1[j].wrapping_add(u32::from(x * u16::from(w[j + 1])));
                self.next2[j] = self.next2[j].wrapping_add(u32::from(x * u16::from(w[j + 2])));
            }
        }

        #[inline(always)]
        fn flush_into(&mut self, products: &mut [u64; 6]) {
            for j in 0..BLOCK {
                let (sq, n1, n2) = (
                    u64::from(self.sq[j]),
                    u64::from(self.next1[j]),
                    u64::from(self.next2[j]),
                );
                match j % 3 {
                    0 => {
                        products[product::RR] += sq;
                        products[product::RG] += n1;
                        products[product::RB] += n2;
                    }
                    1 => {
                        products[product::GG] += sq;
                        products[product::GB] += n1;
                        // n2 pairs this green with the next pixel's red: discarded.
                    }
                    _ => {
                        products[product::BB] += sq;
                        // n1 and n2 pair this blue with the next pixel: discarded.
                    }
                }
            }
            *self = ProductLanes::ZERO;
        }

        const ZERO: ProductLanes = ProductLanes {
            sq: [0; BLOCK],
            next1: [0; BLOCK],
            next2: [0; BLOCK],
        };
    }

    #[inline(always)]
    fn add_bytes(lanes: &mut [u16], px: &[u8]) {
        for (l, &p) in lanes.iter_mut().zip(px) {
            *l = l.wrapping_add(u16::from(p));
        }
    }

    #[inline(always)]
    fn add_generic(lanes: &mut [u16], px: &[u8], products: &mut [u64; 6]) {
        let n = px.len().min(lanes.len());
        // Blocks whose two-byte look-ahead stays inside the image.
        let full = n.saturating_sub(2) / BLOCK;
        let mut acc = ProductLanes::ZERO;
        let mut since_flush = 0;
        let mut block = 0;
        while block < full {
            let end = (block + CHUNK_BLOCKS).min(full);
            let (lo, hi) = (block * BLOCK, end * BLOCK);
            add_bytes(&mut lanes[lo..hi], &px[lo..hi]);
            for o in (lo..hi).step_by(BLOCK) {
                if let Some(w) = px
                    .get(o..o + WINDOW)
                    .and_then(|s| <&[u8; WINDOW]>::try_from(s).ok())
                {
                    acc.add_block(w);
                }
            }
            since_flush += end - block;
            if since_flush >= FLUSH_BLOCKS {
                acc.flush_into(products);
                since_flush = 0;
            }
            block = end;
        }
        acc.flush_into(products);
        // The last pixels (fewer than 17), one at a time.
        let lo = full * BLOCK;
        add_bytes(&mut lanes[lo..n], &px[lo..n]);
        for p in px[lo..n].chunks_exact(3) {
            let (r, g, b) = (u64::from(p[0]), u64::from(p[1]), u64::from(p[2]));
            products[product::RR] += r * r;
            products[product::GG] += g * g;
            products[product::BB] += b * b;
            products[product::RG] += r * g;
            products[product::RB] += r * b;
            products[product::GB] += g * b;
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
        let mut sums = vec![0u64; (side * side * 3) as usize];
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
        // One image with more than FLUSH_BLOCKS blocks of saturated pixels.
        let side = 1024u32; // 1024*1024*3 / 48 = 65,536 blocks
        let img = vec![255u8; (side * side * 3) as usize];
        let mut acc = Accumulator::new(side).unwrap();
        acc.add_image(&img).unwrap();
        let px = u64::from(side * side);
        assert_eq!(acc.totals().products, [65_025 * px; 6]);
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
