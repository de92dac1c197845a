//! Is a JPEG's entropy-coded data all there? The check zune-jpeg does not make.
//!
//! zune-jpeg (0.5.15, strict mode included; 0.5.16-rc3 alike), as libjpeg, feeds zero
//! bits to its Huffman decoder once a scan's data runs into a marker. A file cut short
//! with an end-of-image marker after the cut, or whose frame header declares more
//! pixels than its scans hold, therefore decodes without an error, the missing part flat
//! grey (libjpeg only warns: "premature end of data segment"). [`JpegCheck`] walks every
//! scan's Huffman-coded data as a decoder does, symbol by symbol, without dequantising
//! or transforming, and counts the bits each scan really holds: a scan whose MCUs need a
//! bit past the end of its data (or of a restart interval's data) is truncated. A
//! progressive image must also bring every coefficient of every component to full
//! precision: a file cut exactly between two scans holds only whole scans, but not all
//! of them. Every encoder we know of (libjpeg's scan scripts, mozjpeg, jpeg-encoder)
//! sends all 64 coefficients of every component.
//!
//! Not checked (the walk stops and the decoder alone decides): lossless, hierarchical
//! and arithmetic-coded frames, which the decoder refuses anyway, and scans that use a
//! Huffman table the file never defines (Motion-JPEG frames rely on the standard
//! tables; the decoder supplies them).
//!
//! Cost: about what Huffman decoding costs inside the decoder, without the inverse DCT,
//! upsampling and colour conversion (`cargo bench -p sv-benches --bench prep`).

use crate::error::{Format, ImageError, Truncation};

/// Why a walk stopped.
enum Fail {
    Short(Truncation),
    Bad(&'static str),
}

/// Bits resolved by one table look-up; longer codes take the canonical slow path.
const LOOKAHEAD: u32 = 11;

/// Which coefficients a table's symbols describe (what a symbol means for the walk).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The symbol is the size of the DC difference that follows.
    Dc,
    /// The symbol is (zero run << 4) | size of the AC coefficient that follows.
    Ac,
}

/// One Huffman table, decoded as libjpeg's `jpeg_make_d_derived_tbl` (JPEG Annex C).
#[derive(Clone)]
struct Huffman {
    defined: bool,
    /// `(length << 8) | symbol` for every `LOOKAHEAD`-bit prefix that starts with a
    /// code of at most `LOOKAHEAD` bits; 0 otherwise.
    fast: [u16; 1 << LOOKAHEAD],
    /// The sequential walk's whole step for the same prefixes: `(advance << 8) | bits`,
    /// where `bits` counts the code and the coefficient bits after it (at most 32) and
    /// `advance` is how far the coefficient index moves (AC: run + 1, 16 for a run of
    /// sixteen zeros, 0 for end of block; DC: 1). One look-up and one shift per
    /// coefficient, where the symbol and its bits would take two (libjpeg-turbo's and
    /// stb_image's "fast AC" idea; nothing is decoded, so the value bits need not be in
    /// the look-ahead). 0: not resolved here, take [`Bits::symbol`].
    step: [u16; 1 << LOOKAHEAD],
    /// Largest code of each length (-1: none), index 1..=16.
    maxcode: [i32; 17],
    /// `values` index of a code of each length: `code + offset[length]`.
    offset: [i32; 17],
    values: [u8; 256],
}

impl Huffman {
    fn empty() -> Huffman {
        Huffman {
            defined: false,
            fast: [0; 1 << LOOKAHEAD],
            step: [0; 1 << LOOKAHEAD],
            maxcode: [-1; 17],
            offset: [0; 17],
            values: [0; 256],
        }
    }

    /// Build from the DHT counts per code length and the symbols.
    fn set(&mut self, class: Class, counts: &[u8], symbols: &[u8]) -> Result<(), Fail> {
        self.fast.fill(0);
        self.step.fill(0);
        self.maxcode = [-1; 17];
        self.values[..symbols.len()].copy_from_slice(symbols);
        let (mut code, mut k) = (0u32, 0usize);
        for len in 1..=16u32 {
            let count = usize::from(counts[len as usize - 1]);
            self.offset[len as usize] = k as i32 - code as i32;
            for _ in 0..count {
                if code >= 1 << len {
                    return Err(Fail::Bad("a Huffman table has too many codes"));
                }
                if len <= LOOKAHEAD {
                    let shift = LOOKAHEAD - len;
                    let entry = (len as u16) << 8 | u16::from(symbols[k]);
                    let prefixes = (code << shift) as usize..((code + 1) << shift) as usize;
                    self.fast[prefixes.clone()].fill(entry);
                    let (advance, extra) = match class {
                        Class::Dc => (1, u32::from(symbols[k] & 31)),
                        Class::Ac => match (symbols[k] >> 4, u32::from(symbols[k] & 15)) {
                            (15, 0) => (16, 0),
                            (_, 0) => (0, 0),
                            (run, size) => (u16::from(run) + 1, size),
                        },
                    };
                    if len + extra <= 32 {
                        self.step[prefixes].fill(advance << 8 | (len + extra) as u16);
                    }
                }
                code += 1;
                k += 1;
            }
            if count > 0 {
                self.maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        self.defined = true;
        Ok(())
    }
}

/// Reads one entropy-coded segment MSB first, unstuffing `FF 00`. At a marker (or the
/// end of the file) it feeds zero bits, as a decoder does, and remembers how many: the
/// segment is overrun once a zero bit that was not in the file has been consumed.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
    /// Offset of the marker (its first `FF`) or end of file that ended the segment.
    end: Option<usize>,
    /// Fed zero bits still in `acc` (always its last ones).
    fake: u32,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Bits<'a> {
        Bits {
            data,
            pos,
            acc: 0,
            n: 0,
            end: None,
            fake: 0,
        }
    }

    /// Top up `acc` to at least 57 bits.
    #[inline]
    fn fill(&mut self) {
        while self.n <= 56 {
            if self.end.is_some() {
                self.n += 8;
                self.fake += 8;
                continue;
            }
            // Fast path: eight bytes without an FF among them.
            if let Some(w) = self.data.get(self.pos..self.pos + 8) {
                let w = u64::from_be_bytes(w.try_into().unwrap_or([0xFF; 8]));
                if !has_ff(w) {
                    let bytes = (64 - self.n) / 8;
                    let bits = bytes * 8;
                    self.acc |= (w >> (64 - bits)) << (64 - self.n - bits);
                    self.n += bits;
                    self.pos += bytes as usize;
                    continue;
                }
            }
            let byte = match self.data.get(self.pos) {
                None => {
                    self.end = Some(self.pos);
                    continue;
                }
                Some(&0xFF) => {
                    let mut q = self.pos + 1;
                    while self.data.get(q) == Some(&0xFF) {
                        q += 1;
                    }
                    if self.data.get(q) == Some(&0) {
                        self.pos = q + 1;
                        0xFF
                    } else {
                        self.end = Some(self.pos);
                        continue;
                    }
                }
                Some(&b) => {
                    self.pos += 1;
                    b
                }
            };
            self.acc |= u64::from(byte) << (56 - self.n);
            self.n += 8;
        }
    }

    #[inline]
    fn consume(&mut self, k: u32) {
        self.acc <<= k;
        self.n -= k;
    }

    /// Skip `k` (at most 32) bits.
    #[inline]
    fn skip(&mut self, k: u32) {
        if self.n < k {
            self.fill();
        }
        self.consume(k);
    }

    /// Read `k` (1 to 32) bits.
    #[inline]
    fn read(&mut self, k: u32) -> u32 {
        if k == 0 {
            return 0;
        }
        if self.n < k {
            self.fill();
        }
        let v = (self.acc >> (64 - k)) as u32;
        self.consume(k);
        v
    }

    /// One step of a sequential scan's walk through `t`: past one code and the
    /// coefficient bits after it; the coefficient index's advance (0: end of block).
    #[inline(always)]
    fn step(&mut self, t: &Huffman, class: Class) -> Result<usize, Fail> {
        if self.n < 32 {
            self.fill();
        }
        let e = t.step[(self.acc >> (64 - LOOKAHEAD)) as usize];
        if e != 0 {
            self.consume(u32::from(e & 0x3F));
            return Ok(usize::from(e >> 8));
        }
        // a code longer than the look-ahead, or a DC size no table of 8-bit samples has
        let rs = self.symbol(t)?;
        Ok(match class {
            Class::Dc => {
                self.skip(u32::from(rs) & 31);
                1
            }
            Class::Ac => match (rs >> 4, u32::from(rs & 15)) {
                (15, 0) => 16,
                (_, 0) => 0,
                (run, size) => {
                    self.skip(size);
                    usize::from(run) + 1
                }
            },
        })
    }

    /// Decode one Huffman symbol.
    #[inline]
    fn symbol(&mut self, t: &Huffman) -> Result<u8, Fail> {
        if self.n < 32 {
            self.fill();
        }
        let e = t.fast[(self.acc >> (64 - LOOKAHEAD)) as usize];
        if e != 0 {
            self.consume(u32::from(e >> 8));
            return Ok(e as u8);
        }
        for len in LOOKAHEAD + 1..=16 {
            let code = (self.acc >> (64 - len)) as i32;
            if code <= t.maxcode[len as usize] {
                self.consume(len);
                return Ok(t.values[(code + t.offset[len as usize]) as usize & 0xFF]);
            }
        }
        Err(Fail::Bad("a Huffman code matches no table entry"))
    }

    /// True once a bit that is not in the file has been consumed.
    #[inline]
    fn overrun(&self) -> bool {
        self.n < self.fake
    }

    /// Where the segment's data ends: the marker it ran into, else the first marker
    /// (not a stuffed `FF 00`) after what was read.
    fn end_of_data(&self) -> usize {
        self.end
            .unwrap_or_else(|| next_marker(self.data, self.pos).map_or(self.data.len(), |m| m.0))
    }
}

/// True when some byte of `w` is `FF`.
#[inline]
fn has_ff(w: u64) -> bool {
    let v = !w;
    v.wrapping_sub(0x0101_0101_0101_0101) & !v & 0x8080_8080_8080_8080 != 0
}

/// The first marker at or after `from`: (offset of its first `FF`, marker code,
/// offset after the code). `FF 00` (stuffing) and runs of `FF` fill bytes are skipped.
fn next_marker(data: &[u8], from: usize) -> Option<(usize, u8, usize)> {
    let mut i = from;
    while i < data.len() {
        let ff = i + data.get(i..)?.iter().position(|&b| b == 0xFF)?;
        let mut q = ff + 1;
        while data.get(q) == Some(&0xFF) {
            q += 1;
        }
        match data.get(q) {
            None => return None,
            Some(0) => i = q + 1,
            Some(&m) => return Some((ff, m, q + 1)),
        }
    }
    None
}

#[derive(Clone, Copy, Default)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    /// Blocks across and down (not padded to whole MCUs).
    bw: usize,
    bh: usize,
    /// Start of this component's blocks in `JpegCheck::nonzero`.
    base: usize,
}

#[derive(Clone, Copy)]
struct Frame {
    progressive: bool,
    width: usize,
    height: usize,
    hmax: usize,
    vmax: usize,
    count: usize,
    comps: [Component; 4],
}

/// One scan's header (SOS).
struct Scan {
    /// Frame component index, DC table, AC table.
    comps: [(usize, usize, usize); 4],
    count: usize,
    ss: usize,
    se: usize,
    ah: u32,
}

/// True when the JPEG is baseline or extended sequential Huffman (SOF0, SOF1) and its
/// first scan holds every component of the frame (one interleaved scan, as libjpeg and
/// every camera write), found by stepping over the header segments only.
pub(crate) fn interleaved_sequential(bytes: &[u8]) -> bool {
    let mut p = 2; // after SOI
    let mut components = None;
    while let Some((_, marker, after)) = next_marker(bytes, p) {
        let count_at = |offset: usize| bytes.get(after + 2 + offset).copied();
        match marker {
            0xC0 | 0xC1 if components.is_none() => components = count_at(5),
            0xC2..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xD9 => return false,
            0xDA => return components.is_some() && count_at(0) == components,
            0xD0..=0xD8 | 0x01 => {
                p = after;
                continue;
            }
            _ => {}
        }
        let Some(len) = bytes.get(after..after + 2) else {
            return false;
        };
        p = after + usize::from(u16::from_be_bytes([len[0], len[1]])).max(2);
    }
    false
}

/// Reusable state of the check (tables and progressive refinement history), kept by
/// a worker across images.
pub struct JpegCheck {
    dc: Vec<Huffman>,
    ac: Vec<Huffman>,
    /// Per block of each component, the coefficients (zig-zag bit k) already nonzero:
    /// AC refinement scans read a correction bit for each.
    nonzero: Vec<u64>,
    /// Per component and coefficient, the successive-approximation bit position it
    /// has reached (-1: never sent; 0: full precision).
    precision: [[i8; 64]; 4],
    /// Images walked before decoding (see [`crate::Preprocessor::jpeg_walks`]).
    pub(crate) walks: u64,
}

impl Default for JpegCheck {
    fn default() -> Self {
        JpegCheck::new()
    }
}

impl std::fmt::Debug for JpegCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JpegCheck").finish_non_exhaustive()
    }
}

impl JpegCheck {
    /// A checker with empty tables.
    pub fn new() -> JpegCheck {
        JpegCheck {
            dc: vec![Huffman::empty(); 4],
            ac: vec![Huffman::empty(); 4],
            nonzero: Vec::new(),
            precision: [[-1; 64]; 4],
            walks: 0,
        }
    }

    /// Check that every scan of the JPEG in `bytes` holds all its data: `Ok` for a
    /// complete file (or one this check does not cover, see the module header),
    /// [`ImageError::Truncated`] naming the scan and how far its data reached, or
    /// [`ImageError::Corrupt`] for a malformed table or code.
    pub fn check(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.walk(bytes).map_err(|f| match f {
            Fail::Short(t) => ImageError::Truncated(t),
            Fail::Bad(reason) => ImageError::Corrupt {
                format: Format::Jpeg,
                reason: reason.into(),
            },
        })
    }

    fn walk(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        for t in self.dc.iter_mut().chain(self.ac.iter_mut()) {
            t.defined = false;
        }
        self.precision = [[-1; 64]; 4];
        let mut frame: Option<Frame> = None;
        let mut restart = 0usize;
        let mut scans = 0usize;
        let mut p = 2; // after SOI (sniffed by the caller)
        while let Some((_, marker, after)) = next_marker(bytes, p) {
            p = after;
            match marker {
                0xD9 => break,
                0xD0..=0xD8 | 0x01 => continue, // no length: stray RST, SOI, TEM
                _ => {}
            }
            let Some(len) = bytes.get(after..after + 2) else {
                break;
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let Some(seg) = bytes.get(after + 2..(after + len).max(after + 2)) else {
                break; // a segment cut by the end of the file: what came before decides
            };
            p = after + len.max(2);
            match marker {
                0xC4 => self.tables(seg)?,
                0xDD if seg.len() >= 2 => {
                    restart = usize::from(u16::from_be_bytes([seg[0], seg[1]]))
                }
                0xC0..=0xC2 if frame.is_none() => frame = Some(self.frame(seg, marker == 0xC2)?),
                // Lossless, hierarchical, arithmetic: not walked (the decoder refuses them).
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(()),
                0xDA => {
                    let Some(frame) = frame.as_ref() else {
                        return Err(Fail::Bad("a scan comes before the frame header"));
                    };
                    let Some(scan) = self.scan(seg, frame)? else {
                        return Ok(());
                    };
                    scans += 1;
                    p = self.scan_data(bytes, p, frame, &scan, restart, scans)?;
                }
                _ => {}
            }
        }
        let Some(frame) = frame else {
            return Ok(()); // the decoder has parsed a frame header; nothing to walk
        };
        for (c, precision) in self.precision[..frame.count].iter().enumerate() {
            if let Some(k) = precision.iter().position(|&al| al != 0) {
                return Err(Fail::Short(Truncation::Incomplete {
                    component: c + 1,
                    coefficient: k,
                    scans,
                }));
            }
        }
        Ok(())
    }

    fn tables(&mut self, mut seg: &[u8]) -> Result<(), Fail> {
        const BAD: Fail = Fail::Bad("a Huffman table segment is malformed");
        while let [class_id, rest @ ..] = seg {
            let counts = rest.get(..16).ok_or(BAD)?;
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            let symbols = rest
                .get(16..16 + total)
                .filter(|_| total <= 256)
                .ok_or(BAD)?;
            let id = usize::from(class_id & 0x0F);
            let (table, class) = match class_id >> 4 {
                0 => (self.dc.get_mut(id), Class::Dc),
                1 => (self.ac.get_mut(id), Class::Ac),
                _ => (None, Class::Dc),
            };
            table.ok_or(BAD)?.set(class, counts, symbols)?;
            seg = &rest[16 + total..];
        }
        Ok(())
    }

    fn frame(&mut self, seg: &[u8], progressive: bool) -> Result<Frame, Fail> {
        const BAD: Fail = Fail::Bad("the frame header is malformed");
        let &[_precision, h0, h1, w0, w1, count, ref rest @ ..] = seg else {
            return Err(BAD);
        };
        let (height, width) = (
            usize::from(u16::from_be_bytes([h0, h1])),
            usize::from(u16::from_be_bytes([w0, w1])),
        );
        let count = usize::from(count);
        if !(1..=4).contains(&count) || rest.len() < 3 * count {
            return Err(BAD);
        }
        let mut comps = [Component::default(); 4];
        for (c, spec) in comps.iter_mut().zip(rest.chunks_exact(3)) {
            let (h, v) = (usize::from(spec[1] >> 4), usize::from(spec[1] & 15));
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                return Err(BAD);
            }
            *c = Component {
                id: spec[0],
                h,
                v,
                ..Component::default()
            };
        }
        let hmax = comps[..count].iter().map(|c| c.h).max().unwrap_or(1);
        let vmax = comps[..count].iter().map(|c| c.v).max().unwrap_or(1);
        let mut base = 0;
        for c in &mut comps[..count] {
            c.bw = (width * c.h).div_ceil(hmax).div_ceil(8);
            c.bh = (height * c.v).div_ceil(vmax).div_ceil(8);
            c.base = base;
            base += c.bw * c.bh;
        }
        if progressive {
            self.nonzero.clear();
            self.nonzero.resize(base, 0);
        }
        Ok(Frame {
            progressive,
            width,
            height,
            hmax,
            vmax,
            count,
            comps,
        })
    }

    /// Parse a scan header; `None` when it uses a table the file never defines.
    fn scan(&mut self, seg: &[u8], frame: &Frame) -> Result<Option<Scan>, Fail> {
        const BAD: Fail = Fail::Bad("a scan header is malformed");
        let (&count, rest) = seg.split_first().ok_or(BAD)?;
        let count = usize::from(count);
        if !(1..=4).contains(&count) || rest.len() < 2 * count + 3 {
            return Err(BAD);
        }
        let mut comps = [(0, 0, 0); 4];
        for (slot, spec) in comps.iter_mut().zip(rest.chunks_exact(2).take(count)) {
            let index = frame.comps[..frame.count]
                .iter()
                .position(|c| c.id == spec[0])
                .ok_or(Fail::Bad("a scan names a component the frame lacks"))?;
            *slot = (index, usize::from(spec[1] >> 4), usize::from(spec[1] & 15));
        }
        let tail = &rest[2 * count..];
        let (ss, se, ah, al) = (
            usize::from(tail[0]),
            usize::from(tail[1]),
            u32::from(tail[2] >> 4),
            u32::from(tail[2] & 15),
        );
        let scan = Scan {
            comps,
            count,
            ss,
            se,
            ah,
        };
        if frame.progressive {
            let dc = ss == 0;
            if se > 63 || ss > se || (dc && se != 0) || (!dc && count != 1) || al > 13 {
                return Err(Fail::Bad("a progressive scan's parameters are invalid"));
            }
        }
        let dc_needed = !frame.progressive || (ss == 0 && ah == 0);
        let ac_needed = !frame.progressive || ss > 0;
        for &(_, td, ta) in &scan.comps[..count] {
            let dc_ok = !dc_needed || self.dc.get(td).is_some_and(|t| t.defined);
            let ac_ok = !ac_needed || self.ac.get(ta).is_some_and(|t| t.defined);
            if !dc_ok || !ac_ok {
                return Ok(None);
            }
        }
        // What the scan brings each component to.
        for &(c, _, _) in &scan.comps[..count] {
            let band = if frame.progressive { ss..=se } else { 0..=63 };
            let al = if frame.progressive { al as i8 } else { 0 };
            self.precision[c][band].fill(al);
        }
        Ok(Some(scan))
    }

    /// Walk one scan's data from `start`; the offset where its data ends.
    fn scan_data(
        &mut self,
        data: &[u8],
        start: usize,
        frame: &Frame,
        scan: &Scan,
        restart: usize,
        number: usize,
    ) -> Result<usize, Fail> {
        let single = scan.count == 1;
        let (across, down) = if single {
            let c = &frame.comps[scan.comps[0].0];
            (c.bw, c.bh)
        } else {
            (
                frame.width.div_ceil(8 * frame.hmax),
                frame.height.div_ceil(8 * frame.vmax),
            )
        };
        let total = across * down;
        let short = |mcus: usize| {
            Fail::Short(Truncation::Scan {
                scan: number,
                mcus,
                expected: total,
                width: frame.width,
                height: frame.height,
            })
        };
        let mut bits = Bits::new(data, start);
        let mut eobrun = 0u32;
        for mcu in 0..total {
            if restart > 0 && mcu > 0 && mcu % restart == 0 {
                match next_marker(data, bits.end_of_data()) {
                    Some((_, 0xD0..=0xD7, after)) => {
                        bits = Bits::new(data, after);
                        eobrun = 0;
                    }
                    _ => return Err(short(mcu)),
                }
            }
            let (mx, my) = (mcu % across, mcu / across);
            for &(c, td, ta) in &scan.comps[..scan.count] {
                let comp = frame.comps[c];
                let (h, v) = if single { (1, 1) } else { (comp.h, comp.v) };
                for _ in 0..h * v {
                    let r = if !frame.progressive {
                        sequential(&mut bits, &self.dc[td], &self.ac[ta])
                    } else if scan.ss == 0 {
                        if scan.ah == 0 {
                            bits.symbol(&self.dc[td])
                                .map(|s| bits.skip(u32::from(s) & 31))
                        } else {
                            bits.skip(1);
                            Ok(())
                        }
                    } else {
                        // AC scans have one component: an MCU is one block of its grid.
                        let block = comp.base + my * comp.bw + mx;
                        let nz = self
                            .nonzero
                            .get_mut(block)
                            .ok_or(Fail::Bad("a progressive scan walks past its component"))?;
                        if scan.ah == 0 {
                            ac_first(&mut bits, &self.ac[ta], scan, &mut eobrun, nz)
                        } else {
                            ac_refine(&mut bits, &self.ac[ta], scan, &mut eobrun, nz)
                        }
                    };
                    if bits.overrun() {
                        return Err(short(mcu));
                    }
                    r?;
                }
            }
        }
        Ok(bits.end_of_data())
    }
}

/// One block of a sequential scan.
#[inline]
fn sequential(bits: &mut Bits<'_>, dc: &Huffman, ac: &Huffman) -> Result<(), Fail> {
    bits.step(dc, Class::Dc)?;
    let mut k = 1;
    while k < 64 {
        match bits.step(ac, Class::Ac)? {
            0 => break,
            advance => k += advance,
        }
    }
    Ok(())
}

/// One block of a progressive first AC scan (libjpeg's `decode_mcu_AC_first`).
fn ac_first(
    bits: &mut Bits<'_>,
    ac: &Huffman,
    scan: &Scan,
    eobrun: &mut u32,
    nonzero: &mut u64,
) -> Result<(), Fail> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let rs = bits.symbol(ac)?;
        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r;
            bits.skip(s);
            if k < 64 {
                *nonzero |= 1 << k;
            }
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = (1 << r) + bits.read(r as u32) - 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

/// One block of a progressive AC refinement scan (libjpeg's `decode_mcu_AC_refine`):
/// every coefficient already nonzero takes a correction bit.
fn ac_refine(
    bits: &mut Bits<'_>,
    ac: &Huffman,
    scan: &Scan,
    eobrun: &mut u32,
    nonzero: &mut u64,
) -> Result<(), Fail> {
    let mut k = scan.ss;
    if *eobrun == 0 {
        while k <= scan.se {
            let rs = bits.symbol(ac)?;
            let (mut r, s) = (i32::from(rs >> 4), rs & 15);
            if s != 0 {
                bits.skip(1); // the new coefficient's sign
            } else if r != 15 {
                *eobrun = (1 << r) + bits.read(r as u32);
                break;
            }
            while k <= scan.se {
                if *nonzero & (1 << k) != 0 {
                    bits.skip(1);
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if s != 0 && k < 64 {
                *nonzero |= 1 << k;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        // The rest of the band: one correction bit per nonzero coefficient.
        if k <= scan.se {
            let band = (u64::MAX >> (63 - scan.se)) & (u64::MAX << k);
            for _ in 0..(*nonzero & band).count_ones() {
                bits.skip(1);
            }
        }
        *eobrun -= 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
