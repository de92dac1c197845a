//! (SuperVision patch) A byte source over an in-memory slice with direct access.
//!
//! With zune-core's `std` feature on (the `image` crate turns it on), `ZCursor` gets
//! zune-core's blanket `ZByteReaderTrait` impl for `std::io::BufRead + Seek`, so every
//! byte the bit reader takes goes through `std::io::Read::read` into a one-byte buffer,
//! and every 4-byte refill through a `read` loop and a `memcpy` call. `SliceReader`
//! implements the trait itself, with plain slice indexing; it behaves as `ZCursor`
//! does under `std` (a read past the end returns 0 and does not move; a short
//! `read_exact_bytes` fails without moving).

use alloc::vec::Vec;

use zune_core::bytestream::{ZByteIoError, ZByteReaderTrait, ZSeekFrom};

/// An in-memory JPEG for [`crate::JpegDecoder`]: `JpegDecoder::new(SliceReader::new(bytes))`.
#[derive(Clone, Copy, Debug)]
pub struct SliceReader<'a> {
    data: &'a [u8],
    pos:  usize
}

impl<'a> SliceReader<'a> {
    /// A reader at the start of `data`.
    pub const fn new(data: &'a [u8]) -> Self {
        SliceReader { data, pos: 0 }
    }

    /// The bytes from the current position on (empty past the end).
    #[inline(always)]
    fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }
}

impl ZByteReaderTrait for SliceReader<'_> {
    #[inline(always)]
    fn read_byte_no_error(&mut self) -> u8 {
        match self.data.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                b
            }
            None => 0
        }
    }

    #[inline(always)]
    fn read_exact_bytes(&mut self, buf: &mut [u8]) -> Result<(), ZByteIoError> {
        let rest = self.rest();
        match rest.get(..buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                self.pos += buf.len();
                Ok(())
            }
            None => Err(ZByteIoError::NotEnoughBytes(rest.len(), buf.len()))
        }
    }

    #[inline(always)]
    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<usize, ZByteIoError> {
        let n = self.peek_bytes(buf)?;
        self.pos += n;
        Ok(n)
    }

    #[inline(always)]
    fn peek_bytes(&mut self, buf: &mut [u8]) -> Result<usize, ZByteIoError> {
        let rest = self.rest();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    #[inline(always)]
    fn peek_exact_bytes(&mut self, buf: &mut [u8]) -> Result<(), ZByteIoError> {
        let rest = self.rest();
        match rest.get(..buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(ZByteIoError::NotEnoughBytes(rest.len(), buf.len()))
        }
    }

    fn z_seek(&mut self, from: ZSeekFrom) -> Result<u64, ZByteIoError> {
        let (base, offset) = match from {
            ZSeekFrom::Start(n) => {
                self.pos = usize::try_from(n).map_err(ZByteIoError::from)?;
                return Ok(n);
            }
            ZSeekFrom::End(n) => (self.data.len(), n),
            ZSeekFrom::Current(n) => (self.pos, n)
        };
        let offset = isize::try_from(offset).map_err(ZByteIoError::from)?;
        match base.checked_add_signed(offset) {
            Some(n) => {
                self.pos = n;
                Ok(n as u64)
            }
            None => Err(ZByteIoError::SeekError("Negative seek"))
        }
    }

    #[inline(always)]
    fn is_eof(&mut self) -> Result<bool, ZByteIoError> {
        Ok(self.pos >= self.data.len())
    }

    #[inline(always)]
    fn z_position(&mut self) -> Result<u64, ZByteIoError> {
        Ok(self.pos as u64)
    }

    fn read_remaining(&mut self, sink: &mut Vec<u8>) -> Result<usize, ZByteIoError> {
        let rest = self.rest();
        sink.extend_from_slice(rest);
        self.pos += rest.len();
        Ok(rest.len())
    }
}
