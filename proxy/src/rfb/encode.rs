//! Server-side encoders: a framebuffer region to bytes in one viewer's pixel format.
//!
//! Each viewer owns one [`EncoderState`], and with it its own zlib streams, so any number
//! of viewers can share one framebuffer without corrupting each other's streams.

use flate2::{Compress, Compression, FlushCompress};

use super::encoding::{self, ClientEncodings};
use super::error::{Error, Result};
use super::fb::{Framebuffer, Rect};
use super::pixel::{Packer, PixelFormat};
use super::server_msg::{ServerMessage, UpdateWriter};
use super::wire::put_compact_len;

/// Tight may not send rectangles wider than this.
pub const TIGHT_MAX_WIDTH: u16 = 2048;
/// We split Tight rectangles to at most this many pixels (as TigerVNC does).
pub const TIGHT_MAX_AREA: usize = 65536;
/// Tight sends data shorter than this without zlib or a length.
pub const TIGHT_MIN_TO_COMPRESS: usize = 12;
/// JPEG quality and chroma subsampling per Tight quality level (TigerVNC's table).
const JPEG_QUALITY: [(u8, u8); 10] = [
    (15, 4),
    (29, 4),
    (41, 4),
    (42, 2),
    (62, 2),
    (77, 2),
    (79, 1),
    (86, 1),
    (92, 1),
    (100, 1),
];

/// zlib levels per Tight compression level for Tight's streams: full colour (stream 0),
/// two colours (1) and indexed (2). TigerVNC's table, so that a viewer gets the same
/// trade-off from us as from Xvnc, except at the default compression level (2): there
/// TigerVNC deflates bitmaps and indices at zlib level 3, where our deflate (miniz_oxide)
/// still uses its fastest matcher and comes out larger than at level 2, so we take 4 (about
/// zlib's 3 in size; these streams are a quarter or less of the pixel data).
const TIGHT_ZLIB: [[u32; 3]; 10] = [
    [0, 0, 0],
    [1, 1, 1],
    [2, 4, 4],
    [2, 5, 5],
    [3, 7, 6],
    [4, 8, 7],
    [5, 8, 7],
    [6, 9, 8],
    [7, 9, 9],
    [9, 9, 9],
];

/// The zlib level for one Tight stream at the viewer's compression level.
fn tight_zlib_level(compress: Option<u8>, stream: usize) -> u32 {
    let row = TIGHT_ZLIB[usize::from(compress.unwrap_or(2).min(9))];
    row[stream.min(2)]
}

const HEXTILE_RAW: u8 = 1;
const HEXTILE_BG: u8 = 2;
const HEXTILE_FG: u8 = 4;
const HEXTILE_ANY: u8 = 8;
const HEXTILE_COLOURED: u8 = 16;

/// Deflates `input` with a sync flush so the peer can inflate it all now.
fn deflate_sync(c: &mut Compress, mut input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    loop {
        out.reserve(input.len() / 2 + 256);
        let before = c.total_in();
        c.compress_vec(input, out, FlushCompress::Sync)
            .map_err(|_| Error::Zlib("deflate failed"))?;
        let used = (c.total_in() - before) as usize;
        input = &input[used..];
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
    }
}

/// Slots in a palette's hash index: twice the largest palette, so probes stay short.
const PAL_SLOTS: usize = 512;

/// A small ordered colour set, in wire pixel values, with a hash index so that looking a
/// colour up costs a probe or two rather than a scan of up to 256 entries.
struct Palette {
    colours: Vec<u32>,
    counts: Vec<u32>,
    max: usize,
    /// Index + 1 of the colour in each slot; 0 is empty.
    slots: [u16; PAL_SLOTS],
}

fn pal_hash(v: u32) -> usize {
    (v.wrapping_mul(0x9e37_79b1) >> 23) as usize
}

impl Palette {
    fn new(max: usize) -> Self {
        Palette {
            colours: Vec::with_capacity(max),
            counts: Vec::with_capacity(max),
            max: max.min(PAL_SLOTS / 2),
            slots: [0; PAL_SLOTS],
        }
    }

    /// The slot holding `v`, or the empty slot where it would go.
    fn slot(&self, v: u32) -> usize {
        let mut h = pal_hash(v);
        loop {
            match self.slots[h] {
                0 => return h,
                i if self.colours[usize::from(i) - 1] == v => return h,
                _ => h = (h + 1) % PAL_SLOTS,
            }
        }
    }

    /// Index of a colour, adding it if there is room.
    fn insert(&mut self, v: u32) -> Option<usize> {
        let h = self.slot(v);
        match self.slots[h] {
            0 => {
                if self.colours.len() >= self.max {
                    return None;
                }
                self.colours.push(v);
                self.counts.push(1);
                self.slots[h] = self.colours.len() as u16;
                Some(self.colours.len() - 1)
            }
            i => {
                let i = usize::from(i) - 1;
                self.counts[i] += 1;
                Some(i)
            }
        }
    }

    fn index(&self, v: u32) -> usize {
        usize::from(self.slots[self.slot(v)]).saturating_sub(1)
    }

    /// Builds the palette of `vals`; `None` if there are more than `max` colours.
    fn of(vals: &[u32], max: usize) -> Option<Palette> {
        let mut p = Palette::new(max);
        let mut last = None;
        for &v in vals {
            if last == Some(v) {
                continue;
            }
            last = Some(v);
            p.insert(v)?;
        }
        Some(p)
    }

    fn len(&self) -> usize {
        self.colours.len()
    }
}

/// Appends a ZRLE CPIXEL: the wire value, less the unused byte `drop` when there is one.
#[inline]
fn put_cpixel(pf: &PixelFormat, drop: Option<usize>, v: u32, out: &mut Vec<u8>) {
    let bpp = pf.bytes_per_pixel();
    let b = match bpp {
        1 => [v as u8, 0, 0, 0],
        2 if pf.big_endian => {
            let [x, y] = (v as u16).to_be_bytes();
            [x, y, 0, 0]
        }
        2 => {
            let [x, y] = (v as u16).to_le_bytes();
            [x, y, 0, 0]
        }
        _ if pf.big_endian => v.to_be_bytes(),
        _ => v.to_le_bytes(),
    };
    match drop {
        Some(0) => out.extend_from_slice(&b[1..4]),
        Some(_) => out.extend_from_slice(&b[0..3]),
        None => out.extend_from_slice(&b[..bpp]),
    }
}

fn runs(vals: &[u32]) -> usize {
    if vals.is_empty() {
        return 0;
    }
    1 + vals.windows(2).filter(|w| w[0] != w[1]).count()
}

/// One viewer's encoder: pixel format, accepted encodings and zlib streams.
pub struct EncoderState {
    packer: Packer,
    enc: ClientEncodings,
    zlib: Option<Compress>,
    zrle: Option<Compress>,
    tight: [Option<Compress>; 4],
    scratch: Vec<u8>,
}

impl std::fmt::Debug for EncoderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderState")
            .field("pf", self.packer.format())
            .field("enc", &self.enc)
            .finish_non_exhaustive()
    }
}

impl EncoderState {
    /// A fresh state for a viewer using `pf`.
    pub fn new(pf: PixelFormat) -> Result<Self> {
        pf.validate()?;
        Ok(EncoderState {
            packer: Packer::new(pf),
            enc: ClientEncodings::from_list(&[encoding::RAW]),
            zlib: None,
            zrle: None,
            tight: [None, None, None, None],
            scratch: Vec::new(),
        })
    }

    /// The viewer's pixel format.
    pub fn pixel_format(&self) -> &PixelFormat {
        self.packer.format()
    }

    /// Applies SetPixelFormat. The zlib streams carry on: their bytes are format-free.
    /// For a colour-map format the caller must send [`colour_map_message`] before the
    /// next update.
    pub fn set_pixel_format(&mut self, pf: PixelFormat) -> Result<()> {
        pf.validate()?;
        self.packer = Packer::new(pf);
        Ok(())
    }

    /// Applies SetEncodings.
    pub fn set_encodings(&mut self, list: &[i32]) {
        self.enc = ClientEncodings::from_list(list);
    }

    /// What the viewer accepts.
    pub fn encodings(&self) -> &ClientEncodings {
        &self.enc
    }

    /// The colour a viewer sees for one of ours, after its format's precision loss.
    pub fn seen_colour(&self, rgb: u32) -> u32 {
        self.packer.round_trip(rgb)
    }

    fn level(&self, default: u32) -> Compression {
        Compression::new(self.enc.compress.map_or(default, u32::from).min(9))
    }

    /// Encodes `r` of `fb` with the viewer's preferred encoding.
    pub fn encode(
        &mut self,
        upd: &mut UpdateWriter,
        out: &mut Vec<u8>,
        fb: &Framebuffer,
        r: &Rect,
    ) -> Result<()> {
        let e = self.enc.pick();
        self.encode_with(upd, out, fb, r, e)
    }

    /// Encodes `r` of `fb` with a given encoding (one of Raw, Hextile, Zlib, ZRLE, Tight).
    pub fn encode_with(
        &mut self,
        upd: &mut UpdateWriter,
        out: &mut Vec<u8>,
        fb: &Framebuffer,
        r: &Rect,
        enc: i32,
    ) -> Result<()> {
        r.check_within(fb.width(), fb.height())?;
        match enc {
            encoding::RAW => {
                upd.rect_header(out, r, enc);
                self.raw(fb, r, out);
            }
            encoding::HEXTILE => {
                upd.rect_header(out, r, enc);
                self.hextile(fb, r, out);
            }
            encoding::ZLIB => {
                upd.rect_header(out, r, enc);
                self.zlib(fb, r, out)?;
            }
            encoding::ZRLE => {
                upd.rect_header(out, r, enc);
                self.zrle(fb, r, out)?;
            }
            encoding::TIGHT => self.tight(upd, out, fb, r)?,
            e => return Err(Error::UnsupportedEncoding(e)),
        }
        Ok(())
    }

    /// A CopyRect from `(sx, sy)`; the caller knows the viewer already has the source.
    pub fn copy_rect(
        &self,
        upd: &mut UpdateWriter,
        out: &mut Vec<u8>,
        fb: &Framebuffer,
        dst: &Rect,
        sx: u16,
        sy: u16,
    ) -> Result<()> {
        dst.check_within(fb.width(), fb.height())?;
        Rect::new(sx, sy, dst.w, dst.h).check_within(fb.width(), fb.height())?;
        upd.rect_header(out, dst, encoding::COPY_RECT);
        out.extend_from_slice(&sx.to_be_bytes());
        out.extend_from_slice(&sy.to_be_bytes());
        Ok(())
    }

    fn raw(&self, fb: &Framebuffer, r: &Rect, out: &mut Vec<u8>) {
        for dy in 0..r.h {
            self.packer.put_all(fb.row(r, dy), out);
        }
    }

    fn zlib(&mut self, fb: &Framebuffer, r: &Rect, out: &mut Vec<u8>) -> Result<()> {
        let mut raw = std::mem::take(&mut self.scratch);
        raw.clear();
        self.raw(fb, r, &mut raw);
        let level = self.level(6);
        let c = self.zlib.get_or_insert_with(|| Compress::new(level, true));
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let res = deflate_sync(c, &raw, out);
        let n = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&n.to_be_bytes());
        self.scratch = raw;
        res
    }

    fn packed_tile(&self, fb: &Framebuffer, t: &Rect, vals: &mut Vec<u32>) {
        vals.clear();
        vals.reserve(t.area());
        for dy in 0..t.h {
            self.packer.pack_into(fb.row(t, dy), vals);
        }
    }

    fn hextile(&self, fb: &Framebuffer, r: &Rect, out: &mut Vec<u8>) {
        let pf = *self.packer.format();
        let bpp = pf.bytes_per_pixel();
        let mut bg: Option<u32> = None;
        let mut fg: Option<u32> = None;
        let mut vals = Vec::with_capacity(256);
        let mut subs: Vec<(u32, u8, u8, u8, u8)> = Vec::new();
        for ty in (0..r.h).step_by(16) {
            for tx in (0..r.w).step_by(16) {
                let t = Rect::new(r.x + tx, r.y + ty, (r.w - tx).min(16), (r.h - ty).min(16));
                self.packed_tile(fb, &t, &mut vals);
                let raw_len = vals.len() * bpp;
                let pal = Palette::of(&vals, 255);
                let (tbg, ncol) = match &pal {
                    Some(p) => {
                        let i = (0..p.len()).max_by_key(|&i| p.counts[i]).unwrap_or(0);
                        (p.colours[i], p.len())
                    }
                    None => (vals[0], usize::MAX),
                };
                if ncol == 1 {
                    if bg == Some(tbg) {
                        out.push(0);
                    } else {
                        out.push(HEXTILE_BG);
                        pf.write_value(tbg, out);
                        bg = Some(tbg);
                    }
                    continue;
                }
                subs.clear();
                let fits = ncol != usize::MAX && hextile_subrects(&vals, t.w, t.h, tbg, &mut subs);
                let mono = ncol == 2;
                let sub_len = if mono { 2 } else { 2 + bpp };
                let mut flags = HEXTILE_ANY;
                let mut len = 1 + subs.len() * sub_len;
                if bg != Some(tbg) {
                    flags |= HEXTILE_BG;
                    len += bpp;
                }
                let tfg = if mono {
                    subs.first().map(|s| s.0)
                } else {
                    None
                };
                if mono && fg != tfg {
                    flags |= HEXTILE_FG;
                    len += bpp;
                }
                if !mono {
                    flags |= HEXTILE_COLOURED;
                }
                if !fits || subs.len() > 255 || len >= raw_len {
                    out.push(HEXTILE_RAW);
                    for &v in &vals {
                        pf.write_value(v, out);
                    }
                    bg = None;
                    fg = None;
                    continue;
                }
                out.push(flags);
                if flags & HEXTILE_BG != 0 {
                    pf.write_value(tbg, out);
                    bg = Some(tbg);
                }
                if flags & HEXTILE_FG != 0 {
                    if let Some(f) = tfg {
                        pf.write_value(f, out);
                    }
                    fg = tfg;
                }
                if !mono {
                    fg = None;
                }
                out.push(subs.len() as u8);
                for &(c, x, y, w, h) in &subs {
                    if !mono {
                        pf.write_value(c, out);
                    }
                    out.push((x << 4) | y);
                    out.push(((w - 1) << 4) | (h - 1));
                }
            }
        }
    }

    fn zrle(&mut self, fb: &Framebuffer, r: &Rect, out: &mut Vec<u8>) -> Result<()> {
        let pf = *self.packer.format();
        let drop = pf.cpixel_dropped_byte();
        let cps = if drop.is_some() {
            3
        } else {
            pf.bytes_per_pixel()
        };
        let put_c = |v: u32, o: &mut Vec<u8>| put_cpixel(&pf, drop, v, o);
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        let mut vals = Vec::with_capacity(4096);
        for ty in (0..r.h).step_by(64) {
            for tx in (0..r.w).step_by(64) {
                let t = Rect::new(r.x + tx, r.y + ty, (r.w - tx).min(64), (r.h - ty).min(64));
                self.packed_tile(fb, &t, &mut vals);
                zrle_tile(&vals, t.w, cps, &put_c, &mut data);
            }
        }
        let level = self.level(6);
        let c = self.zrle.get_or_insert_with(|| Compress::new(level, true));
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let res = deflate_sync(c, &data, out);
        let n = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&n.to_be_bytes());
        self.scratch = data;
        res
    }

    fn tight(
        &mut self,
        upd: &mut UpdateWriter,
        out: &mut Vec<u8>,
        fb: &Framebuffer,
        r: &Rect,
    ) -> Result<()> {
        if r.is_empty() {
            upd.rect_header(out, r, encoding::TIGHT);
            let pf = *self.packer.format();
            out.push(0x80);
            self.put_tpixel(&pf, 0, out);
            return Ok(());
        }
        let w = r.w.min(TIGHT_MAX_WIDTH);
        let rows = (TIGHT_MAX_AREA / usize::from(w)).clamp(1, usize::from(u16::MAX)) as u16;
        for y in (0..r.h).step_by(usize::from(rows)) {
            for x in (0..r.w).step_by(usize::from(w)) {
                let s = Rect::new(r.x + x, r.y + y, (r.w - x).min(w), (r.h - y).min(rows));
                upd.rect_header(out, &s, encoding::TIGHT);
                self.tight_one(fb, &s, out)?;
            }
        }
        Ok(())
    }

    fn put_tpixel(&self, pf: &PixelFormat, v: u32, out: &mut Vec<u8>) {
        if self.packer.is_identity() {
            out.extend_from_slice(&[(v >> 16) as u8, (v >> 8) as u8, v as u8]);
        } else if pf.is_tight_888() {
            let rgb = pf.unpack(v);
            out.extend_from_slice(&[(rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8]);
        } else {
            pf.write_value(v, out);
        }
    }

    /// Chooses fill, mono, palette, JPEG or full colour for one rectangle the way
    /// TigerVNC's EncodeManager does: solid first, then an indexed palette when the
    /// colour count is small for the area, else JPEG when the viewer asked for a quality
    /// level, else lossless full colour.
    fn tight_one(&mut self, fb: &Framebuffer, r: &Rect, out: &mut Vec<u8>) -> Result<()> {
        let pf = *self.packer.format();
        let mut vals = Vec::with_capacity(r.area());
        self.packed_tile(fb, r, &mut vals);
        let jpeg = self.enc.quality.filter(|_| pf.bits_per_pixel >= 16);
        let mut max_colours = (r.area() / 16).clamp(2, 256);
        if jpeg.is_some() {
            max_colours = max_colours.min(if self.enc.compress.is_some_and(|c| c < 2) {
                24
            } else {
                96
            });
        }
        let pal = Palette::of(&vals, max_colours);
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        let stream;
        match pal {
            Some(p) if p.len() == 1 => {
                out.push(0x80);
                self.put_tpixel(&pf, p.colours[0], out);
                self.scratch = data;
                return Ok(());
            }
            Some(p) => {
                // Palette filter; stream 1 for two colours (bitmap), 2 otherwise.
                stream = if p.len() == 2 { 1 } else { 2 };
                out.push(((stream as u8) << 4) | 0x40);
                out.push(1);
                out.push((p.len() - 1) as u8);
                for &c in &p.colours {
                    self.put_tpixel(&pf, c, out);
                }
                if p.len() == 2 {
                    for row in vals.chunks_exact(usize::from(r.w)) {
                        for byte in row.chunks(8) {
                            let mut b = 0u8;
                            for (i, &v) in byte.iter().enumerate() {
                                if v == p.colours[1] {
                                    b |= 0x80 >> i;
                                }
                            }
                            data.push(b);
                        }
                    }
                } else {
                    let mut last = (u32::MAX, 0usize);
                    for &v in &vals {
                        if v != last.0 {
                            last = (v, p.index(v));
                        }
                        data.push(last.1 as u8);
                    }
                }
            }
            None if jpeg.is_some() => {
                let q = usize::from(jpeg.unwrap_or(9).min(9));
                let (quality, sub) = JPEG_QUALITY[q];
                let mut rgb = Vec::with_capacity(r.area() * 3);
                let exact = self.packer.is_identity();
                for dy in 0..r.h {
                    for &p in fb.row(r, dy) {
                        let c = if exact { p } else { self.packer.round_trip(p) };
                        rgb.extend_from_slice(&[(c >> 16) as u8, (c >> 8) as u8, c as u8]);
                    }
                }
                let mut jpg = Vec::new();
                let mut e = jpeg_encoder::Encoder::new(&mut jpg, quality);
                e.set_sampling_factor(match sub {
                    4 => jpeg_encoder::SamplingFactor::R_4_2_0,
                    2 => jpeg_encoder::SamplingFactor::R_4_2_2,
                    _ => jpeg_encoder::SamplingFactor::R_4_4_4,
                });
                e.encode(&rgb, r.w, r.h, jpeg_encoder::ColorType::Rgb)
                    .map_err(|e| Error::Jpeg(e.to_string()))?;
                if jpg.len() >= 1 << 22 {
                    return Err(Error::Jpeg("JPEG data too large for Tight".into()));
                }
                out.push(0x90);
                put_compact_len(out, jpg.len());
                out.extend_from_slice(&jpg);
                self.scratch = data;
                return Ok(());
            }
            None => {
                stream = 0;
                out.push(0x00);
                for &v in &vals {
                    self.put_tpixel(&pf, v, &mut data);
                }
            }
        }
        let res = if data.len() < TIGHT_MIN_TO_COMPRESS {
            out.extend_from_slice(&data);
            Ok(())
        } else {
            let level = Compression::new(tight_zlib_level(self.enc.compress, stream));
            let c = self.tight[stream].get_or_insert_with(|| Compress::new(level, true));
            let mut z = Vec::with_capacity(data.len() / 2 + 64);
            let res = deflate_sync(c, &data, &mut z);
            put_compact_len(out, z.len());
            out.extend_from_slice(&z);
            res
        };
        self.scratch = data;
        res
    }
}

/// Greedy cover of the non-background pixels by same-coloured rectangles. Returns false
/// when there would be more than 255.
fn hextile_subrects(
    vals: &[u32],
    w: u16,
    h: u16,
    bg: u32,
    subs: &mut Vec<(u32, u8, u8, u8, u8)>,
) -> bool {
    let (w, h) = (usize::from(w), usize::from(h));
    let mut done = [false; 256];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if done[i] || vals[i] == bg {
                continue;
            }
            let c = vals[i];
            let mut rw = 1;
            while x + rw < w && vals[i + rw] == c && !done[i + rw] {
                rw += 1;
            }
            let mut rh = 1;
            'down: while y + rh < h {
                for k in 0..rw {
                    let j = (y + rh) * w + x + k;
                    if vals[j] != c || done[j] {
                        break 'down;
                    }
                }
                rh += 1;
            }
            for yy in y..y + rh {
                for xx in x..x + rw {
                    done[yy * w + xx] = true;
                }
            }
            if subs.len() == 255 {
                return false;
            }
            subs.push((c, x as u8, y as u8, rw as u8, rh as u8));
        }
    }
    true
}

fn put_run(len: usize, out: &mut Vec<u8>) {
    let mut n = len - 1;
    while n >= 255 {
        out.push(255);
        n -= 255;
    }
    out.push(n as u8);
}

/// One ZRLE tile: solid, packed palette, palette RLE, plain RLE or raw, whichever is
/// estimated smallest.
fn zrle_tile(
    vals: &[u32],
    w: u16,
    cps: usize,
    put_c: &impl Fn(u32, &mut Vec<u8>),
    out: &mut Vec<u8>,
) {
    let n = vals.len();
    let nruns = runs(vals);
    let pal = Palette::of(vals, 127);
    if let Some(p) = &pal {
        if p.len() == 1 {
            out.push(1);
            put_c(vals[0], out);
            return;
        }
    }
    let raw = n * cps;
    let plain_rle = nruns * (cps + 1) + n / 255;
    let (pal_rle, packed) = match &pal {
        Some(p) => {
            let bits = match p.len() {
                2 => 1,
                3..=4 => 2,
                5..=16 => 4,
                _ => 0,
            };
            let packed = match 8usize.checked_div(bits) {
                Some(per_byte) => {
                    p.len() * cps + usize::from(w).div_ceil(per_byte) * (n / usize::from(w).max(1))
                }
                None => usize::MAX,
            };
            (p.len() * cps + nruns * 2 + n / 255, packed)
        }
        None => (usize::MAX, usize::MAX),
    };
    let best = raw.min(plain_rle).min(pal_rle).min(packed);
    if let (Some(p), true) = (&pal, best == packed) {
        let bits = match p.len() {
            2 => 1,
            3..=4 => 2,
            _ => 4,
        };
        out.push(p.len() as u8);
        for &c in &p.colours {
            put_c(c, out);
        }
        // Runs are common: look a colour up only when it changes.
        let mut last = (vals[0], p.index(vals[0]) as u8);
        for row in vals.chunks_exact(usize::from(w)) {
            let mut byte = 0u8;
            let mut used = 0;
            for &v in row {
                if v != last.0 {
                    last = (v, p.index(v) as u8);
                }
                byte = (byte << bits) | last.1;
                used += bits;
                if used == 8 {
                    out.push(byte);
                    byte = 0;
                    used = 0;
                }
            }
            if used > 0 {
                out.push(byte << (8 - used));
            }
        }
    } else if let (Some(p), true) = (&pal, best == pal_rle) {
        out.push(128 + p.len() as u8);
        for &c in &p.colours {
            put_c(c, out);
        }
        let mut i = 0;
        while i < n {
            let v = vals[i];
            let mut j = i + 1;
            while j < n && vals[j] == v {
                j += 1;
            }
            let idx = p.index(v) as u8;
            if j - i == 1 {
                out.push(idx);
            } else {
                out.push(idx | 0x80);
                put_run(j - i, out);
            }
            i = j;
        }
    } else if best == plain_rle {
        out.push(128);
        let mut i = 0;
        while i < n {
            let v = vals[i];
            let mut j = i + 1;
            while j < n && vals[j] == v {
                j += 1;
            }
            put_c(v, out);
            put_run(j - i, out);
            i = j;
        }
    } else {
        out.push(0);
        for &v in vals {
            put_c(v, out);
        }
    }
}

/// The SetColourMapEntries that makes a colour-map viewer show our `rrrgggbb` indices.
pub fn colour_map_message() -> ServerMessage {
    ServerMessage::SetColourMapEntries {
        first: 0,
        colours: PixelFormat::colour_map(),
    }
}

/// A deterministic desktop-like frame for benchmarks: a flat background, text-like
/// two-colour blocks, and a noisy gradient "photo" in one corner.
pub fn bench_frame(width: u16, height: u16) -> Result<Framebuffer> {
    let mut fb = Framebuffer::new(width, height)?;
    let w = usize::from(width);
    let mut s: u32 = 0x1234_5678;
    for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
        let (x, y) = (i % w, i / w);
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        *p = if x < w / 3 && y < usize::from(height) / 2 {
            let g = ((x + y) & 0xff) as u32;
            ((g << 16) | (g << 8) | (255 - g)) ^ (s & 0x0f0f0f)
        } else if (y / 16) % 3 == 0 && (x / 8 + y) % 5 < 2 {
            0x202020
        } else {
            0xf0f0e8
        };
    }
    Ok(fb)
}

/// A benchmark hook: encodes a whole `fb` once with ZRLE and once with Tight (JPEG
/// quality 8) for a 32-bit viewer, returning the byte counts. Time it from outside.
pub fn bench_encode_frame(fb: &Framebuffer) -> Result<(usize, usize)> {
    let mut sizes = [0usize; 2];
    for (i, list) in [
        &[encoding::ZRLE][..],
        &[encoding::TIGHT, encoding::TIGHT_QUALITY_0 + 8][..],
    ]
    .iter()
    .enumerate()
    {
        let mut st = EncoderState::new(PixelFormat::rgb888())?;
        st.set_encodings(list);
        let mut out = Vec::new();
        let mut upd = UpdateWriter::begin(&mut out);
        st.encode(&mut upd, &mut out, fb, &fb.rect())?;
        upd.finish(&mut out);
        sizes[i] = out.len();
    }
    Ok((sizes[0], sizes[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control byte of the first Tight rectangle for a frame filled by `paint`.
    fn tight_control(list: &[i32], paint: impl Fn(usize) -> u32) -> u8 {
        let mut fb = Framebuffer::new(64, 64).unwrap();
        for (i, p) in fb.pixels_mut().iter_mut().enumerate() {
            *p = paint(i);
        }
        let mut st = EncoderState::new(PixelFormat::rgb888()).unwrap();
        st.set_encodings(list);
        let mut out = Vec::new();
        let mut upd = UpdateWriter::begin(&mut out);
        st.encode(&mut upd, &mut out, &fb, &fb.rect()).unwrap();
        out[16]
    }

    fn noise(i: usize) -> u32 {
        (i as u32).wrapping_mul(2_654_435_761) & 0xffffff
    }

    #[test]
    fn tight_picks_fill_mono_palette_jpeg_and_full_colour() {
        let t = [encoding::TIGHT];
        let tq = [encoding::TIGHT, encoding::TIGHT_QUALITY_0 + 5];
        assert_eq!(tight_control(&t, |_| 0x123456), 0x80);
        assert_eq!(
            tight_control(&t, |i| if i % 3 == 0 { 0 } else { 0xffffff }),
            0x50
        );
        assert_eq!(tight_control(&t, |i| (i % 7) as u32 * 0x10101), 0x60);
        assert_eq!(tight_control(&tq, noise), 0x90);
        assert_eq!(tight_control(&t, noise), 0x00);
        // With JPEG allowed, a moderate palette still goes indexed.
        assert_eq!(tight_control(&tq, |i| (i % 7) as u32 * 0x10101), 0x60);
    }

    #[test]
    fn palette_indexes_every_colour_and_refuses_one_too_many() {
        // Colours chosen to collide in the hash as well as not.
        let colours: Vec<u32> = (0..256u32)
            .map(|i| if i % 2 == 0 { i << 23 } else { i * 0x010203 })
            .collect();
        let mut vals = colours.clone();
        vals.extend(colours.iter().rev());
        let p = Palette::of(&vals, 256).unwrap();
        assert_eq!(p.len(), 256);
        for (i, &c) in colours.iter().enumerate() {
            assert_eq!(p.index(c), i);
            assert_eq!(p.counts[i], if i == 255 { 1 } else { 2 }, "runs count once");
        }
        assert!(Palette::of(&vals, 255).is_none());
        assert!(Palette::of(&[7, 7, 8, 9], 2).is_none());
        assert_eq!(Palette::of(&[7, 7, 8, 7], 2).unwrap().colours, [7, 8]);
    }

    #[test]
    fn tight_zlib_levels_by_stream_and_clamped() {
        assert_eq!(
            (0..3)
                .map(|s| tight_zlib_level(None, s))
                .collect::<Vec<_>>(),
            [2, 4, 4]
        );
        assert_eq!(tight_zlib_level(Some(0), 1), 0);
        assert_eq!(tight_zlib_level(Some(200), 3), 9);
    }

    #[test]
    fn cpixels_leave_out_the_unused_byte() {
        let mut out = Vec::new();
        let pf = PixelFormat::rgb888();
        put_cpixel(&pf, pf.cpixel_dropped_byte(), 0x123456, &mut out);
        let be = PixelFormat {
            big_endian: true,
            ..pf
        };
        put_cpixel(&be, be.cpixel_dropped_byte(), 0x123456, &mut out);
        let p565 = PixelFormat::rgb565();
        put_cpixel(&p565, None, 0xabcd, &mut out);
        put_cpixel(&pf, None, 0x123456, &mut out);
        assert_eq!(
            out,
            [0x56, 0x34, 0x12, 0x12, 0x34, 0x56, 0xcd, 0xab, 0x56, 0x34, 0x12, 0]
        );
    }

    #[test]
    fn colour_map_viewers_get_indices() {
        let mut fb = Framebuffer::new(2, 1).unwrap();
        fb.pixels_mut().copy_from_slice(&[0xffffff, 0xff0000]);
        let st = EncoderState::new(PixelFormat::colour_map8()).unwrap();
        let mut out = Vec::new();
        st.raw(&fb, &fb.rect(), &mut out);
        assert_eq!(out, [0xff, 0xe0]);
        let mut m = Vec::new();
        colour_map_message().write(&mut m);
        assert_eq!(m.len(), 6 + 256 * 6);
    }
}
