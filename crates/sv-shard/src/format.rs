//! Byte-level encoding of the shard header and index (the layout is specified in the
//! crate header).

use crate::manifest::Codec;

/// First 8 bytes of every shard file.
pub const MAGIC: [u8; 8] = *b"SVSHARD\0";
/// Format version written and read by this build.
pub const VERSION: u32 = 1;
/// Where the data region starts (one page: raw records stay page-aligned).
pub const DATA_OFFSET: u64 = 4096;
/// Bytes per index entry.
pub const INDEX_ENTRY_SIZE: usize = 24;

/// The decoded shard header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub codec: Codec,
    pub side: u32,
    pub records: u64,
    pub index_offset: u64,
    pub index_crc: u32,
}

impl Header {
    /// File length this header implies.
    pub fn file_len(&self) -> Option<u64> {
        self.records
            .checked_mul(INDEX_ENTRY_SIZE as u64)?
            .checked_add(self.index_offset)
    }

    pub fn encode(&self) -> [u8; DATA_OFFSET as usize] {
        let mut b = [0u8; DATA_OFFSET as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.codec.code().to_le_bytes());
        b[16..20].copy_from_slice(&self.side.to_le_bytes());
        b[20..24].copy_from_slice(&(sv_core::CHANNELS as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.records.to_le_bytes());
        b[32..40].copy_from_slice(&DATA_OFFSET.to_le_bytes());
        b[40..48].copy_from_slice(&self.index_offset.to_le_bytes());
        b[48..52].copy_from_slice(&(INDEX_ENTRY_SIZE as u32).to_le_bytes());
        b[52..56].copy_from_slice(&self.index_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..56]);
        b[56..60].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and check the header's own consistency; `Err` carries what is wrong.
    pub fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() < DATA_OFFSET as usize {
            return Err(format!(
                "file is {} bytes, shorter than the {DATA_OFFSET}-byte header",
                b.len()
            ));
        }
        if b[0..8] != MAGIC {
            return Err("bad magic: not a SuperVision shard file".into());
        }
        let stored = u32_at(b, 56);
        let actual = crc32fast::hash(&b[0..56]);
        if stored != actual {
            return Err(format!(
                "header checksum mismatch (stored {stored:08x}, computed {actual:08x})"
            ));
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(format!(
                "format version {version} is not supported (this build reads {VERSION})"
            ));
        }
        let codec = Codec::from_code(u32_at(b, 12))
            .ok_or_else(|| format!("unknown codec code {}", u32_at(b, 12)))?;
        let channels = u32_at(b, 20);
        if channels != sv_core::CHANNELS as u32 {
            return Err(format!("channels is {channels}, expected 3"));
        }
        let data_offset = u64_at(b, 32);
        if data_offset != DATA_OFFSET {
            return Err(format!(
                "data offset is {data_offset}, expected {DATA_OFFSET}"
            ));
        }
        let entry = u32_at(b, 48);
        if entry as usize != INDEX_ENTRY_SIZE {
            return Err(format!(
                "index entry size is {entry}, expected {INDEX_ENTRY_SIZE}"
            ));
        }
        let h = Header {
            codec,
            side: u32_at(b, 16),
            records: u64_at(b, 24),
            index_offset: u64_at(b, 40),
            index_crc: u32_at(b, 52),
        };
        if h.index_offset < DATA_OFFSET {
            return Err(format!(
                "index offset {} lies inside the header",
                h.index_offset
            ));
        }
        if h.file_len().is_none() {
            return Err("record count overflows the file size".into());
        }
        Ok(h)
    }
}

/// One index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub offset: u64,
    pub len: u32,
    pub label: u32,
    pub crc: u32,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; INDEX_ENTRY_SIZE] {
        let mut b = [0u8; INDEX_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.label.to_le_bytes());
        b[16..20].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// `b` must hold at least one entry (callers slice by the checked index length).
    pub fn decode(b: &[u8]) -> IndexEntry {
        IndexEntry {
            offset: u64_at(b, 0),
            len: u32_at(b, 8),
            label: u32_at(b, 12),
            crc: u32_at(b, 16),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_damage() {
        let h = Header {
            codec: Codec::Jpeg,
            side: 256,
            records: 7,
            index_offset: 9000,
            index_crc: 0xdead_beef,
        };
        let mut b = h.encode();
        assert_eq!(Header::decode(&b), Ok(h));
        assert_eq!(h.file_len(), Some(9000 + 7 * 24));
        b[17] ^= 1;
        assert!(Header::decode(&b).unwrap_err().contains("header checksum"));
        let mut b = h.encode();
        b[0] = b'X';
        assert!(Header::decode(&b).unwrap_err().contains("magic"));
        assert!(Header::decode(&b[..100]).unwrap_err().contains("shorter"));
    }

    #[test]
    fn index_entry_round_trip() {
        let e = IndexEntry {
            offset: 1 << 40,
            len: 196_608,
            label: 999,
            crc: 42,
        };
        assert_eq!(IndexEntry::decode(&e.encode()), e);
    }
}
