//! Types every SuperVision crate shares: the class list (and [`compare_classes`]),
//! the split, the stored image geometry, the per-sample random number generator
//! keyed by (seed, epoch, sample index), CRC-32 text, and the one way files are
//! written and opened ([`fs`]: atomic writes, regular files only).
//!
//! The keyed RNG is what makes the pipeline deterministic whatever the worker count:
//! a sample's random choices depend only on its key, never on which thread drew it or
//! when.
#![warn(missing_docs)]

mod classes;
pub mod fs;
pub mod lock;

pub use classes::{ClassListMismatch, FirstDifference, compare_classes};

use serde::{Deserialize, Serialize};

/// Side of the stored square images, as the paper: shorter side to 256, centre crop.
pub const DEFAULT_SIDE: u32 = 256;
/// Colour channels of every stored image (RGB).
pub const CHANNELS: usize = 3;

/// One class: its WordNet id (`n01440764`) and a human-readable name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// WordNet id, the folder name in ImageNet's train tree.
    pub wnid: String,
    /// Human-readable name (`tench, Tinca tinca`); the wnid when no name is known.
    pub name: String,
}

/// Which part of a dataset a shard set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images.
    Train,
    /// Validation images.
    Val,
}

impl Split {
    /// The lowercase name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Geometry of a stored image: `side x side x 3`, interleaved RGB (HWC), uint8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    /// Width and height in pixels.
    pub side: u32,
}

impl Geometry {
    /// Bytes of one decoded image.
    pub fn image_bytes(self) -> usize {
        self.side as usize * self.side as usize * CHANNELS
    }
    /// Pixels of one image.
    pub fn pixels(self) -> usize {
        self.side as usize * self.side as usize
    }
}

impl Default for Geometry {
    fn default() -> Self {
        Geometry { side: DEFAULT_SIDE }
    }
}

/// The generator behind every per-sample random choice.
pub type SampleRng = rand_pcg::Pcg64Mcg;

/// SplitMix64 finaliser: a bijective mix with full avalanche, so nearby keys give
/// unrelated seeds.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A 128-bit state derived from a key of any number of words.
fn keyed_state(words: &[u64]) -> u128 {
    let mut a = 0x243F_6A88_85A3_08D3_u64;
    let mut b = 0x1319_8A2E_0370_7344_u64;
    for &w in words {
        a = mix64(a ^ w);
        b = mix64(b.wrapping_add(w).rotate_left(17) ^ a);
    }
    // Pcg64Mcg needs an odd state.
    ((u128::from(a) << 64) | u128::from(b)) | 1
}

/// RNG for one sample in one epoch: the same key always gives the same stream.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> SampleRng {
    rand_pcg::Pcg64Mcg::new(keyed_state(&[seed, epoch, index, 0x5A4D_504C]))
}

/// RNG for one purpose that is not per sample (the epoch permutation, a subset draw):
/// `stream` names the purpose so two uses of one seed never share a stream.
pub fn stream_rng(seed: u64, stream: u64, epoch: u64) -> SampleRng {
    rand_pcg::Pcg64Mcg::new(keyed_state(&[seed, stream, epoch, 0x5354_524D]))
}

/// A CRC-32 as the project writes it in text: exactly 8 lowercase hex digits.
pub fn crc32_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

/// Parse a CRC-32 written by [`crc32_hex`]: exactly 8 lowercase hex digits, nothing
/// else (no sign, prefix, spaces or upper case, all of which `from_str_radix`
/// would let through in part).
pub fn parse_crc32_hex(text: &str) -> Option<u32> {
    let strict = text.len() == 8
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if strict {
        u32::from_str_radix(text, 16).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    #[test]
    fn keyed_rng_depends_only_on_key() {
        let mut r1 = sample_rng(7, 1, 42);
        let mut r2 = sample_rng(7, 1, 42);
        assert_eq!(r1.next_u64(), r2.next_u64());
        let mut r3 = sample_rng(7, 1, 43);
        let mut r4 = sample_rng(7, 2, 42);
        let x = sample_rng(7, 1, 42).next_u64();
        assert_ne!(x, r3.next_u64());
        assert_ne!(x, r4.next_u64());
        assert_ne!(sample_rng(8, 1, 42).next_u64(), x);
        assert_ne!(stream_rng(7, 1, 42).next_u64(), x);
    }

    #[test]
    fn crc_text_is_strict() {
        assert_eq!(crc32_hex(0xabc), "00000abc");
        assert_eq!(parse_crc32_hex("00000abc"), Some(0xabc));
        assert_eq!(parse_crc32_hex("ffffffff"), Some(u32::MAX));
        for bad in [
            "+abcdef1",
            "-0000001",
            "ABCDEF12",
            "0x123456",
            " abcdef1",
            "abcdef1 ",
            "abcdef1",
            "abcdef123",
            "",
            "abcdefg1",
            "\u{e9}bcdef1",
        ] {
            assert_eq!(parse_crc32_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn geometry_sizes() {
        let g = Geometry::default();
        assert_eq!(g.image_bytes(), 256 * 256 * 3);
        assert_eq!(Geometry { side: 4 }.pixels(), 16);
    }
}
