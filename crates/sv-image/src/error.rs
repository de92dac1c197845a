//! Why one image could not be prepared. The caller knows the file; these variants say
//! what is wrong with its bytes, and keep "the file is bad" apart from "the file is
//! larger than we agreed to decode" (a decompression bomb is not a corrupt file).

/// The container format, sniffed from the first bytes (never from the file name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JPEG (baseline or progressive; gray, YCbCr, CMYK, YCCK).
    Jpeg,
    /// PNG (gray, RGB, palette, with or without alpha, 8 or 16 bits).
    Png,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
        })
    }
}

/// Which decoder limit an image hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Image width in pixels.
    Width,
    /// Image height in pixels.
    Height,
    /// Bytes the decoded image would need.
    Alloc,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limit::Width => "width",
            Limit::Height => "height",
            Limit::Alloc => "decoded size in bytes",
        })
    }
}

/// Why one image could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Zero bytes.
    #[error("empty file (0 bytes)")]
    Empty,
    /// The first bytes are neither a JPEG nor a PNG signature.
    #[error("not a JPEG or PNG (first bytes {magic:02x?})")]
    UnknownFormat {
        /// Up to the first 8 bytes of the file.
        magic: Vec<u8>,
    },
    /// The bytes claim a format but do not decode (truncated, damaged, malformed).
    #[error("corrupt {format}: {reason}")]
    Corrupt {
        /// The sniffed format.
        format: Format,
        /// What the decoder reported.
        reason: String,
    },
    /// A valid file using a feature this decoder does not support (12-bit JPEG,
    /// arithmetic coding, ...).
    #[error("unsupported {format}: {reason}")]
    Unsupported {
        /// The sniffed format.
        format: Format,
        /// What is not supported.
        reason: String,
    },
    /// The image is larger than the configured limits (decompression-bomb guard).
    #[error("{format} image {width}x{height}: {limit} {value} exceeds the limit {max}")]
    LimitExceeded {
        /// The sniffed format.
        format: Format,
        /// Width declared in the header.
        width: u64,
        /// Height declared in the header.
        height: u64,
        /// Which limit was hit.
        limit: Limit,
        /// The offending value.
        value: u64,
        /// The configured maximum.
        max: u64,
    },
    /// The caller's output buffer is not `side * side * 3` bytes.
    #[error("output buffer holds {found} bytes, expected {expected} (side x side x 3)")]
    OutputSize {
        /// `side * side * 3`.
        expected: usize,
        /// The buffer's length.
        found: usize,
    },
}

impl ImageError {
    /// True for a limit hit (the file may be fine, just too large to accept).
    pub fn is_limit(&self) -> bool {
        matches!(self, ImageError::LimitExceeded { .. })
    }
}
