//! Client-side decoding: bytes from an upstream server into our framebuffer.
//!
//! The upstream is untrusted. Every rectangle is checked against the framebuffer (the
//! CopyRect source too), every count and length is bounded before anything is allocated
//! for it, and every zlib stream is inflated into a bounded buffer, so a zlib bomb fails
//! cleanly. A rectangle is applied only once all its bytes are here; "need more" leaves
//! the decoder and the framebuffer untouched.

use flate2::{Decompress, FlushDecompress, Status};

use super::client_msg::{Screen, MAX_FENCE_PAYLOAD};
use super::encoding;
use super::error::{Error, Result};
use super::fb::{Framebuffer, Rect};
use super::pixel::PixelFormat;
use super::wire::{finish, PResult, Rd, Stop};

/// Bounds on what an upstream may make us buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Largest ServerCutText.
    pub max_cut_text: u32,
    /// Longest DesktopName.
    pub max_name: u32,
    /// Most bytes one rectangle may occupy on the wire.
    pub max_rect_bytes: usize,
    /// Most pixels in a cursor shape.
    pub max_cursor_pixels: usize,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        DecoderLimits {
            max_cut_text: 1 << 20,
            max_name: 4096,
            max_rect_bytes: 64 << 20,
            max_cursor_pixels: 1 << 18,
        }
    }
}

/// One thing the upstream told us. Pixel rectangles are already applied to the
/// framebuffer when [`ServerEvent::Rect`] comes out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A FramebufferUpdate starts with this many rectangles (0xFFFF may mean "until
    /// LastRect").
    UpdateBegin {
        /// Announced count.
        rects: u16,
    },
    /// A pixel rectangle was drawn.
    Rect {
        /// Where.
        rect: Rect,
        /// How it was encoded.
        encoding: i32,
    },
    /// The framebuffer was resized (and cleared if the size changed).
    DesktopSize {
        /// New width.
        width: u16,
        /// New height.
        height: u16,
    },
    /// ExtendedDesktopSize; the framebuffer was resized if `status` is 0.
    ExtendedDesktopSize {
        /// 0 server, 1 this client, 2 another client.
        reason: u16,
        /// 0 on success, else an error code.
        status: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
        /// Layout.
        screens: Vec<Screen>,
    },
    /// The desktop's name.
    DesktopName(String),
    /// A cursor shape in our colours with its mask.
    Cursor {
        /// Hotspot column.
        hot_x: u16,
        /// Hotspot row.
        hot_y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
        /// Pixels, row-major.
        pixels: Vec<u32>,
        /// One bit per pixel, rows padded to bytes.
        mask: Vec<u8>,
    },
    /// The update is complete.
    UpdateEnd,
    /// SetColourMapEntries.
    ColourMap {
        /// First index.
        first: u16,
        /// Entries.
        colours: Vec<[u16; 3]>,
    },
    /// Bell.
    Bell,
    /// ServerCutText.
    CutText(Vec<u8>),
    /// EndOfContinuousUpdates.
    EndOfContinuousUpdates,
    /// Fence.
    Fence {
        /// Flags.
        flags: u32,
        /// Payload.
        payload: Vec<u8>,
    },
}

const ZCHUNK: usize = 32 * 1024;

/// Inflates all of `input` into `out`, failing if the output would pass `max` bytes.
fn inflate_bounded(
    d: &mut Decompress,
    mut input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<()> {
    let mut tmp = vec![0u8; ZCHUNK];
    loop {
        let room = (max - out.len()).saturating_add(1).min(ZCHUNK);
        let (bi, bo) = (d.total_in(), d.total_out());
        let st = d
            .decompress(input, &mut tmp[..room], FlushDecompress::Sync)
            .map_err(|_| Error::Zlib("corrupt stream"))?;
        let used = (d.total_in() - bi) as usize;
        let made = (d.total_out() - bo) as usize;
        out.extend_from_slice(&tmp[..made]);
        if out.len() > max {
            return Err(Error::Zlib("inflates past its bound"));
        }
        input = &input[used..];
        if st == Status::StreamEnd || (used == 0 && made == 0) {
            return Ok(());
        }
        if input.is_empty() && made < room {
            return Ok(());
        }
    }
}

fn truncated<T>(r: PResult<T>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(Stop::More) => Err(Error::Malformed("truncated compressed data")),
        Err(Stop::Bad(e)) => Err(e),
    }
}

fn too_large(what: &'static str, len: u64, limit: u64) -> Stop {
    Stop::Bad(Error::TooLarge { what, len, limit })
}

/// How pixels of the upstream's format are read.
#[derive(Clone, Copy, Debug)]
struct Px {
    pf: PixelFormat,
    bpp: usize,
    /// The wire value is already `0x00RRGGBB` in its low bytes (32 bits, 8 bits a
    /// channel at shifts 16/8/0): no per-channel scaling is needed.
    direct: bool,
}

impl Px {
    fn new(pf: PixelFormat) -> Px {
        let direct = pf.true_colour
            && pf.bits_per_pixel == 32
            && (pf.red_max, pf.green_max, pf.blue_max) == (255, 255, 255)
            && (pf.red_shift, pf.green_shift, pf.blue_shift) == (16, 8, 0);
        Px {
            pf,
            bpp: pf.bytes_per_pixel(),
            direct,
        }
    }

    fn read(&self, b: &[u8]) -> u32 {
        if self.direct {
            return self.pf.read_value(b) & 0x00ff_ffff;
        }
        self.pf.unpack(self.pf.read_value(b))
    }

    /// Converts one row of wire pixels (`dst.len()` of them) into our colours.
    fn read_row(&self, src: &[u8], dst: &mut [u32]) {
        if self.direct && !self.pf.big_endian {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = u32::from_le_bytes([c[0], c[1], c[2], 0]);
            }
            return;
        }
        for (d, c) in dst.iter_mut().zip(src.chunks_exact(self.bpp)) {
            *d = self.read(c);
        }
    }

    fn take(&self, r: &mut Rd<'_>) -> PResult<u32> {
        Ok(self.read(r.bytes(self.bpp)?))
    }
}

/// Our client side's view of one upstream: framebuffer, pixel format and zlib streams.
pub struct ClientDecoder {
    px: Px,
    fb: Framebuffer,
    limits: DecoderLimits,
    /// Rectangles left in the current update; `None` between updates.
    remaining: Option<u16>,
    zlib: Decompress,
    zrle: Decompress,
    tight: [Decompress; 4],
}

impl std::fmt::Debug for ClientDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDecoder")
            .field("pf", &self.px.pf)
            .field("width", &self.fb.width())
            .field("height", &self.fb.height())
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl ClientDecoder {
    /// A decoder for an upstream of `width` x `height` sending pixels in `pf` (the format
    /// we asked for; it must be true colour).
    pub fn new(pf: PixelFormat, width: u16, height: u16, limits: DecoderLimits) -> Result<Self> {
        Self::check_pf(&pf)?;
        Ok(ClientDecoder {
            px: Px::new(pf),
            fb: Framebuffer::new(width, height)?,
            limits,
            remaining: None,
            zlib: Decompress::new(true),
            zrle: Decompress::new(true),
            tight: std::array::from_fn(|_| Decompress::new(true)),
        })
    }

    fn check_pf(pf: &PixelFormat) -> Result<()> {
        pf.validate()?;
        if !pf.true_colour {
            return Err(Error::PixelFormat(
                "our client side decodes true colour only",
            ));
        }
        Ok(())
    }

    /// Call after sending SetPixelFormat; later rectangles are read in `pf`.
    pub fn set_pixel_format(&mut self, pf: PixelFormat) -> Result<()> {
        Self::check_pf(&pf)?;
        self.px = Px::new(pf);
        Ok(())
    }

    /// The pixel format rectangles are read in.
    pub fn pixel_format(&self) -> &PixelFormat {
        &self.px.pf
    }

    /// The decoded framebuffer.
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.fb
    }

    /// Consumes one message or rectangle from the start of `buf`. `Ok(None)`: more bytes
    /// are needed and nothing changed. An event may consume zero bytes (`UpdateEnd`).
    pub fn process(&mut self, buf: &[u8]) -> Result<Option<(ServerEvent, usize)>> {
        match self.remaining {
            Some(0) => {
                self.remaining = None;
                Ok(Some((ServerEvent::UpdateEnd, 0)))
            }
            Some(n) => {
                let mut r = Rd::new(buf);
                let res = finish(self.rect(&mut r));
                match res? {
                    None => Ok(None),
                    Some((ev, last)) => {
                        self.remaining = if last { None } else { Some(n - 1) };
                        Ok(Some((ev, r.pos())))
                    }
                }
            }
            None => {
                let mut r = Rd::new(buf);
                let res = finish(self.message(&mut r));
                Ok(res?.map(|ev| {
                    if let ServerEvent::UpdateBegin { rects } = ev {
                        self.remaining = Some(rects);
                    }
                    (ev, r.pos())
                }))
            }
        }
    }

    fn message(&mut self, r: &mut Rd<'_>) -> PResult<ServerEvent> {
        Ok(match r.u8()? {
            0 => {
                r.skip(1)?;
                ServerEvent::UpdateBegin { rects: r.u16()? }
            }
            1 => {
                r.skip(1)?;
                let first = r.u16()?;
                let n = r.u16()?;
                let body = r.bytes(usize::from(n) * 6)?;
                ServerEvent::ColourMap {
                    first,
                    colours: body
                        .chunks_exact(6)
                        .map(|c| {
                            [
                                u16::from_be_bytes([c[0], c[1]]),
                                u16::from_be_bytes([c[2], c[3]]),
                                u16::from_be_bytes([c[4], c[5]]),
                            ]
                        })
                        .collect(),
                }
            }
            2 => ServerEvent::Bell,
            3 => {
                r.skip(3)?;
                let len = r.u32()?;
                if len > self.limits.max_cut_text {
                    return Err(too_large(
                        "ServerCutText length",
                        len.into(),
                        self.limits.max_cut_text.into(),
                    ));
                }
                ServerEvent::CutText(r.bytes(len as usize)?.to_vec())
            }
            150 => ServerEvent::EndOfContinuousUpdates,
            248 => {
                r.skip(3)?;
                let flags = r.u32()?;
                let len = r.u8()?;
                if usize::from(len) > MAX_FENCE_PAYLOAD {
                    return Err(too_large(
                        "Fence payload",
                        len.into(),
                        MAX_FENCE_PAYLOAD as u64,
                    ));
                }
                ServerEvent::Fence {
                    flags,
                    payload: r.bytes(len.into())?.to_vec(),
                }
            }
            t => return Err(Error::UnknownMessage(t).into()),
        })
    }

    fn check_bytes(&self, n: usize) -> PResult<()> {
        if n > self.limits.max_rect_bytes {
            return Err(too_large(
                "rectangle bytes",
                n as u64,
                self.limits.max_rect_bytes as u64,
            ));
        }
        Ok(())
    }

    /// One rectangle; the bool is true for LastRect.
    fn rect(&mut self, r: &mut Rd<'_>) -> PResult<(ServerEvent, bool)> {
        let rect = Rect::new(r.u16()?, r.u16()?, r.u16()?, r.u16()?);
        let enc = r.i32()?;
        let (fw, fh) = (self.fb.width(), self.fb.height());
        let drawn = ServerEvent::Rect {
            rect,
            encoding: enc,
        };
        match enc {
            encoding::LAST_RECT => return Ok((ServerEvent::UpdateEnd, true)),
            encoding::DESKTOP_SIZE => {
                if (rect.w, rect.h) != (fw, fh) {
                    self.fb.resize(rect.w, rect.h)?;
                }
                return Ok((
                    ServerEvent::DesktopSize {
                        width: rect.w,
                        height: rect.h,
                    },
                    false,
                ));
            }
            encoding::EXTENDED_DESKTOP_SIZE => {
                let n = r.u8()?;
                r.skip(3)?;
                let mut screens = Vec::with_capacity(n.into());
                for _ in 0..n {
                    screens.push(Screen::parse(r)?);
                }
                if rect.y == 0 && (rect.w, rect.h) != (fw, fh) {
                    self.fb.resize(rect.w, rect.h)?;
                }
                return Ok((
                    ServerEvent::ExtendedDesktopSize {
                        reason: rect.x,
                        status: rect.y,
                        width: rect.w,
                        height: rect.h,
                        screens,
                    },
                    false,
                ));
            }
            encoding::DESKTOP_NAME => {
                let len = r.u32()?;
                if len > self.limits.max_name {
                    return Err(too_large(
                        "DesktopName length",
                        len.into(),
                        self.limits.max_name.into(),
                    ));
                }
                let name = String::from_utf8_lossy(r.bytes(len as usize)?).into_owned();
                return Ok((ServerEvent::DesktopName(name), false));
            }
            encoding::CURSOR => {
                let n = rect.area();
                if n > self.limits.max_cursor_pixels {
                    return Err(too_large(
                        "cursor pixels",
                        n as u64,
                        self.limits.max_cursor_pixels as u64,
                    ));
                }
                let px = r.bytes(n * self.px.bpp)?;
                let mask = r.bytes(usize::from(rect.w).div_ceil(8) * usize::from(rect.h))?;
                return Ok((
                    ServerEvent::Cursor {
                        hot_x: rect.x,
                        hot_y: rect.y,
                        width: rect.w,
                        height: rect.h,
                        pixels: px
                            .chunks_exact(self.px.bpp)
                            .map(|c| self.px.read(c))
                            .collect(),
                        mask: mask.to_vec(),
                    },
                    false,
                ));
            }
            _ => {}
        }
        rect.check_within(fw, fh)?;
        match enc {
            encoding::RAW => {
                let n = rect.area() * self.px.bpp;
                self.check_bytes(n)?;
                let b = r.bytes(n)?;
                // Straight into the framebuffer, row by row: no pixel block in between.
                let px = self.px;
                if rect.w > 0 {
                    let row_bytes = usize::from(rect.w) * px.bpp;
                    for (dy, src) in b.chunks_exact(row_bytes).enumerate() {
                        px.read_row(src, self.fb.row_mut(&rect, dy as u16));
                    }
                }
            }
            encoding::COPY_RECT => {
                let (sx, sy) = (r.u16()?, r.u16()?);
                self.fb.copy_rect(&rect, sx, sy)?;
            }
            encoding::RRE => {
                let px = self.rre(r, &rect)?;
                self.fb.put_rect(&rect, &px)?;
            }
            encoding::HEXTILE => {
                let px = self.hextile(r, &rect)?;
                self.fb.put_rect(&rect, &px)?;
            }
            encoding::ZLIB => {
                let len = r.u32()? as usize;
                self.check_bytes(len)?;
                let data = r.bytes(len)?;
                let want = rect.area() * self.px.bpp;
                let mut raw = Vec::with_capacity(want.min(ZCHUNK));
                inflate_bounded(&mut self.zlib, data, &mut raw, want)?;
                if raw.len() != want {
                    return Err(Error::Zlib("short Zlib rectangle").into());
                }
                let px = self.px;
                if rect.w > 0 {
                    let row_bytes = usize::from(rect.w) * px.bpp;
                    for (dy, src) in raw.chunks_exact(row_bytes).enumerate() {
                        px.read_row(src, self.fb.row_mut(&rect, dy as u16));
                    }
                }
            }
            encoding::ZRLE => {
                let len = r.u32()? as usize;
                self.check_bytes(len)?;
                let data = r.bytes(len)?;
                let px = self.zrle(data, &rect)?;
                self.fb.put_rect(&rect, &px)?;
            }
            encoding::TIGHT => self.tight(r, &rect)?,
            e => return Err(Error::UnsupportedEncoding(e).into()),
        }
        Ok((drawn, false))
    }

    fn rre(&self, r: &mut Rd<'_>, rect: &Rect) -> PResult<Vec<u32>> {
        let n = r.u32()? as usize;
        let each = self.px.bpp + 8;
        if n > rect.area() {
            return Err(too_large("RRE subrectangles", n as u64, rect.area() as u64));
        }
        self.check_bytes(n * each)?;
        let bg = self.px.take(r)?;
        let body = r.bytes(n * each)?;
        let mut px = vec![bg; rect.area()];
        let mut s = Rd::new(body);
        for _ in 0..n {
            let c = self.px.take(&mut s)?;
            let sr = Rect::new(s.u16()?, s.u16()?, s.u16()?, s.u16()?);
            sr.check_within(rect.w, rect.h)?;
            fill(&mut px, rect.w, &sr, c);
        }
        Ok(px)
    }

    fn hextile(&self, r: &mut Rd<'_>, rect: &Rect) -> PResult<Vec<u32>> {
        let mut px = vec![0u32; rect.area()];
        let (mut bg, mut fg) = (0u32, 0u32);
        for ty in (0..rect.h).step_by(16) {
            for tx in (0..rect.w).step_by(16) {
                let (tw, th) = ((rect.w - tx).min(16), (rect.h - ty).min(16));
                let flags = r.u8()?;
                if flags & HEX_RAW != 0 {
                    for y in 0..th {
                        for x in 0..tw {
                            let i = usize::from(ty + y) * usize::from(rect.w) + usize::from(tx + x);
                            px[i] = self.px.take(r)?;
                        }
                    }
                    continue;
                }
                if flags & HEX_BG != 0 {
                    bg = self.px.take(r)?;
                }
                fill(&mut px, rect.w, &Rect::new(tx, ty, tw, th), bg);
                if flags & HEX_FG != 0 {
                    fg = self.px.take(r)?;
                }
                if flags & HEX_ANY != 0 {
                    let n = r.u8()?;
                    for _ in 0..n {
                        let c = if flags & HEX_COLOURED != 0 {
                            self.px.take(r)?
                        } else {
                            fg
                        };
                        let xy = r.u8()?;
                        let wh = r.u8()?;
                        let sr = Rect::new(
                            u16::from(xy >> 4),
                            u16::from(xy & 15),
                            u16::from(wh >> 4) + 1,
                            u16::from(wh & 15) + 1,
                        );
                        sr.check_within(tw, th)?;
                        fill(
                            &mut px,
                            rect.w,
                            &Rect::new(tx + sr.x, ty + sr.y, sr.w, sr.h),
                            c,
                        );
                    }
                }
            }
        }
        Ok(px)
    }

    fn cpixel(&self) -> (usize, Option<usize>) {
        match self.px.pf.cpixel_dropped_byte() {
            Some(d) => (3, Some(d)),
            None => (self.px.bpp, None),
        }
    }

    fn read_cpixel(&self, b: &[u8], drop: Option<usize>) -> u32 {
        match drop {
            None => self.px.read(b),
            Some(d) => {
                let mut full = [0u8; 4];
                let mut j = 0;
                for (i, slot) in full.iter_mut().enumerate() {
                    if i != d {
                        *slot = b[j];
                        j += 1;
                    }
                }
                self.px.read(&full)
            }
        }
    }

    fn zrle(&mut self, data: &[u8], rect: &Rect) -> Result<Vec<u32>> {
        let (cps, drop) = self.cpixel();
        let tiles = usize::from(rect.w).div_ceil(64) * usize::from(rect.h).div_ceil(64);
        // Largest legal tile: a 127-colour palette then two bytes per pixel, or a
        // plain RLE run per pixel.
        let bound = tiles * (1 + 127 * cps) + rect.area() * (cps + 2);
        let mut raw = Vec::new();
        inflate_bounded(&mut self.zrle, data, &mut raw, bound)?;
        let mut px = vec![0u32; rect.area()];
        let mut s = Rd::new(&raw);
        let mut tile = Vec::with_capacity(4096);
        let mut pal = [0u32; 128];
        for ty in (0..rect.h).step_by(64) {
            for tx in (0..rect.w).step_by(64) {
                let (tw, th) = ((rect.w - tx).min(64), (rect.h - ty).min(64));
                let n = usize::from(tw) * usize::from(th);
                tile.clear();
                let sub = truncated(s.u8())?;
                match sub {
                    0 => {
                        let b = truncated(s.bytes(n * cps))?;
                        tile.extend(b.chunks_exact(cps).map(|c| self.read_cpixel(c, drop)));
                    }
                    1 => {
                        let c = self.read_cpixel(truncated(s.bytes(cps))?, drop);
                        tile.resize(n, c);
                    }
                    2..=16 => {
                        let size = usize::from(sub);
                        for p in pal.iter_mut().take(size) {
                            *p = self.read_cpixel(truncated(s.bytes(cps))?, drop);
                        }
                        let bits = match size {
                            2 => 1,
                            3..=4 => 2,
                            _ => 4,
                        };
                        let row = (usize::from(tw) * bits).div_ceil(8);
                        let b = truncated(s.bytes(row * usize::from(th)))?;
                        for y in 0..usize::from(th) {
                            for x in 0..usize::from(tw) {
                                let bit = x * bits;
                                let byte = b[y * row + bit / 8];
                                let idx =
                                    usize::from(byte >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                                if idx >= size {
                                    return Err(Error::Malformed("ZRLE palette index"));
                                }
                                tile.push(pal[idx]);
                            }
                        }
                    }
                    128 => {
                        while tile.len() < n {
                            let c = self.read_cpixel(truncated(s.bytes(cps))?, drop);
                            let len = zrle_run(&mut s, n - tile.len())?;
                            tile.resize(tile.len() + len, c);
                        }
                    }
                    130..=255 => {
                        let size = usize::from(sub - 128);
                        for p in pal.iter_mut().take(size) {
                            *p = self.read_cpixel(truncated(s.bytes(cps))?, drop);
                        }
                        while tile.len() < n {
                            let b = truncated(s.u8())?;
                            let idx = usize::from(b & 0x7f);
                            if idx >= size {
                                return Err(Error::Malformed("ZRLE palette index"));
                            }
                            let len = if b & 0x80 != 0 {
                                zrle_run(&mut s, n - tile.len())?
                            } else {
                                1
                            };
                            tile.resize(tile.len() + len, pal[idx]);
                        }
                    }
                    _ => return Err(Error::Malformed("ZRLE subencoding")),
                }
                for (y, row) in tile.chunks_exact(usize::from(tw)).enumerate() {
                    let i = (usize::from(ty) + y) * usize::from(rect.w) + usize::from(tx);
                    px[i..i + row.len()].copy_from_slice(row);
                }
            }
        }
        Ok(px)
    }

    fn tpixel(&self, tight888: bool, r: &mut Rd<'_>) -> PResult<u32> {
        if tight888 {
            let b = r.bytes(3)?;
            Ok((u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]))
        } else {
            self.px.take(r)
        }
    }

    fn tight(&mut self, r: &mut Rd<'_>, rect: &Rect) -> PResult<()> {
        let t888 = self.px.pf.is_tight_888();
        let tps = if t888 { 3 } else { self.px.bpp };
        let ctl = r.u8()?;
        let resets = ctl & 0x0f;
        let comp = ctl >> 4;
        let (w, h) = (usize::from(rect.w), usize::from(rect.h));
        if comp == 8 {
            let c = self.tpixel(t888, r)?;
            self.tight_resets(resets);
            self.fb.fill_rect(rect, c)?;
            return Ok(());
        }
        if comp == 9 {
            let len = r.compact_len()?;
            let data = r.bytes(len)?;
            self.tight_resets(resets);
            let px = decode_jpeg(data, rect)?;
            self.fb.put_rect(rect, &px)?;
            return Ok(());
        }
        if comp > 9 {
            return Err(Error::Malformed("Tight compression control").into());
        }
        let stream = usize::from(comp & 3);
        let filter = if comp & 4 != 0 { r.u8()? } else { 0 };
        let mut pal = Vec::new();
        let want = match filter {
            0 => w * h * tps,
            1 => {
                let n = usize::from(r.u8()?) + 1;
                for _ in 0..n {
                    pal.push(self.tpixel(t888, r)?);
                }
                if n == 2 {
                    w.div_ceil(8) * h
                } else {
                    w * h
                }
            }
            2 => {
                if self.px.bpp == 1 {
                    return Err(Error::Malformed("Tight gradient at 8 bpp").into());
                }
                w * h * tps
            }
            _ => return Err(Error::Malformed("Tight filter").into()),
        };
        self.check_bytes(want)?;
        let data;
        let mut inflated = Vec::new();
        if want < 12 {
            data = r.bytes(want)?;
            self.tight_resets(resets);
        } else {
            let len = r.compact_len()?;
            let z = r.bytes(len)?;
            self.tight_resets(resets);
            inflated.reserve(want);
            inflate_bounded(&mut self.tight[stream], z, &mut inflated, want)?;
            if inflated.len() != want {
                return Err(Error::Zlib("short Tight rectangle").into());
            }
            data = &inflated;
        }
        let px: Vec<u32> = match filter {
            0 => {
                let mut s = Rd::new(data);
                (0..w * h)
                    .map(|_| truncated(self.tpixel(t888, &mut s)))
                    .collect::<Result<_>>()?
            }
            1 if pal.len() == 2 => {
                let row = w.div_ceil(8);
                let mut v = Vec::with_capacity(w * h);
                for y in 0..h {
                    for x in 0..w {
                        let bit = (data[y * row + x / 8] >> (7 - x % 8)) & 1;
                        v.push(pal[usize::from(bit)]);
                    }
                }
                v
            }
            1 => data
                .iter()
                .map(|&i| pal.get(usize::from(i)).copied())
                .collect::<Option<_>>()
                .ok_or(Error::Malformed("Tight palette index"))?,
            _ => self.gradient(data, w, h, t888),
        };
        self.fb.put_rect(rect, &px)?;
        Ok(())
    }

    fn tight_resets(&mut self, bits: u8) {
        for (i, d) in self.tight.iter_mut().enumerate() {
            if bits & (1 << i) != 0 {
                d.reset(true);
            }
        }
    }

    /// Undoes Tight's gradient filter: each component is predicted from left + above -
    /// above-left, clamped to the component's range.
    fn gradient(&self, data: &[u8], w: usize, h: usize, t888: bool) -> Vec<u32> {
        let pf = self.px.pf;
        let (max, shift): ([u32; 3], [u32; 3]) = if t888 {
            ([255; 3], [16, 8, 0])
        } else {
            (
                [pf.red_max.into(), pf.green_max.into(), pf.blue_max.into()],
                [
                    pf.red_shift.into(),
                    pf.green_shift.into(),
                    pf.blue_shift.into(),
                ],
            )
        };
        let tps = if t888 { 3 } else { self.px.bpp };
        let read = |b: &[u8]| -> u32 {
            if t888 {
                (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
            } else {
                pf.read_value(b)
            }
        };
        let mut prev = vec![[0u32; 3]; w];
        let mut cur = vec![[0u32; 3]; w];
        let mut out = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let d = read(&data[(y * w + x) * tps..][..tps]);
                let mut v = 0;
                for c in 0..3 {
                    let left = if x > 0 { cur[x - 1][c] as i32 } else { 0 };
                    let up = prev[x][c] as i32;
                    let ul = if x > 0 { prev[x - 1][c] as i32 } else { 0 };
                    let pred = (left + up - ul).clamp(0, max[c] as i32) as u32;
                    let comp = (pred + ((d >> shift[c]) & max[c])) & max[c];
                    cur[x][c] = comp;
                    v |= comp << shift[c];
                }
                out.push(if t888 { v } else { pf.unpack(v) });
            }
            std::mem::swap(&mut prev, &mut cur);
        }
        out
    }
}

const HEX_RAW: u8 = 1;
const HEX_BG: u8 = 2;
const HEX_FG: u8 = 4;
const HEX_ANY: u8 = 8;
const HEX_COLOURED: u8 = 16;

fn fill(px: &mut [u32], stride: u16, r: &Rect, c: u32) {
    let stride = usize::from(stride);
    for y in usize::from(r.y)..usize::from(r.y) + usize::from(r.h) {
        let s = y * stride + usize::from(r.x);
        px[s..s + usize::from(r.w)].fill(c);
    }
}

/// A ZRLE run length (bytes of 255 then a final byte, plus one), at most `left`.
fn zrle_run(s: &mut Rd<'_>, left: usize) -> Result<usize> {
    let mut len = 1usize;
    loop {
        let b = truncated(s.u8())?;
        len += usize::from(b);
        if len > left {
            return Err(Error::Malformed("ZRLE run past the tile"));
        }
        if b != 255 {
            return Ok(len);
        }
    }
}

fn decode_jpeg(data: &[u8], rect: &Rect) -> Result<Vec<u32>> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let (w, h) = (usize::from(rect.w), usize::from(rect.h));
    let run = || -> Result<Vec<u8>> {
        let opts = DecoderOptions::default()
            .set_max_width(w.max(1))
            .set_max_height(h.max(1))
            .jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(data), opts);
        d.decode_headers().map_err(|e| Error::Jpeg(e.to_string()))?;
        let info = d.info().ok_or_else(|| Error::Jpeg("no header".into()))?;
        if usize::from(info.width) != w || usize::from(info.height) != h {
            return Err(Error::Jpeg("image size differs from the rectangle".into()));
        }
        let mut out = vec![0u8; w * h * 3];
        d.decode_into(&mut out)
            .map_err(|e| Error::Jpeg(e.to_string()))?;
        Ok(out)
    };
    // The JPEG decoder is third-party code fed by a hostile peer: contain a panic too.
    let rgb = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .map_err(|_| Error::Jpeg("decoder failed".into()))??;
    Ok(rgb
        .chunks_exact(3)
        .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_convert_in_every_byte_order() {
        let le = Px::new(PixelFormat::rgb888());
        let be = Px::new(PixelFormat {
            big_endian: true,
            ..PixelFormat::rgb888()
        });
        let p565 = Px::new(PixelFormat::rgb565());
        let mut d = [0u32; 2];
        le.read_row(&[0x56, 0x34, 0x12, 0xff, 1, 2, 3, 4], &mut d);
        assert_eq!(d, [0x123456, 0x030201], "the top byte is not colour");
        be.read_row(&[0xff, 0x12, 0x34, 0x56, 4, 3, 2, 1], &mut d);
        assert_eq!(d, [0x123456, 0x030201]);
        p565.read_row(&[0x00, 0xf8, 0xe0, 0x07], &mut d);
        assert_eq!(d, [0xff0000, 0x00ff00]);
    }
}
