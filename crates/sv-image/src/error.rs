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

/// Where a JPEG's data runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Truncation {
    /// A scan's data (or one restart interval's) ends before its last MCU.
    #[error(
        "scan {scan} holds {mcus} of the {expected} MCUs of the {width}x{height} frame its \
         header declares (the file was cut short, or the header claims more pixels than the \
         data holds)"
    )]
    Scan {
        /// 1-based scan number.
        scan: usize,
        /// Whole MCUs the scan's data holds.
        mcus: usize,
        /// MCUs the scan needs.
        expected: usize,
        /// Frame width declared by the header.
        width: usize,
        /// Frame height declared by the header.
        height: usize,
    },
    /// Every scan is whole, but the file ends before some component has all its
    /// coefficients at full precision (a progressive file cut between two scans).
    #[error(
        "the file ends after {scans} scan(s), before component {component} has coefficient \
         {coefficient} (zig-zag order) at full precision (cut between two scans)"
    )]
    Incomplete {
        /// 1-based component number.
        component: usize,
        /// First incomplete coefficient, zig-zag index.
        coefficient: usize,
        /// Scans the file holds.
        scans: usize,
    },
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
    /// A JPEG whose entropy-coded data ends before the image does: cut short (with or
    /// without an end-of-image marker after the cut), or a frame header that declares
    /// more pixels than the scans hold. A decoder would fill the rest with grey.
    #[error("truncated JPEG: {0}")]
    Truncated(Truncation),
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
