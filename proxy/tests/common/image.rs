//! Screenshots taken by real peers (vncdotool's BMP, an X server's `xwd` dump) read
//! into `0xRRGGBB` pixels, and searches for the console's glyphs in them.

use super::guest::glyph_strip;

/// An RGB picture, one `0xRRGGBB` word a pixel.
#[derive(Debug, Clone)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u32>,
}

impl Image {
    pub fn at(&self, x: usize, y: usize) -> u32 {
        self.pixels[y * self.width + x]
    }

    /// How many pixels are exactly `rgb`, and their bounding box `(x, y, w, h)`.
    pub fn colour_box(&self, rgb: u32) -> (usize, Option<(usize, usize, usize, usize)>) {
        let (mut n, mut x0, mut y0, mut x1, mut y1) = (0, usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.height {
            for x in 0..self.width {
                if self.at(x, y) == rgb {
                    n += 1;
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x);
                    y1 = y1.max(y);
                }
            }
        }
        let bbox = (n > 0).then(|| (x0, y0, x1 - x0 + 1, y1 - y0 + 1));
        (n, bbox)
    }

    /// Where `text`, drawn by our console renderer in its default colours, appears at
    /// any pixel offset (not only on the cell grid): the top-left corners.
    pub fn find_text(&self, text: &str) -> Vec<(usize, usize)> {
        let strip = glyph_strip(text);
        let sw = usize::from(strip.width());
        let tw = text.chars().count() * 8;
        let sp = strip.pixels();
        let mut found = Vec::new();
        if self.width < tw || self.height < 16 {
            return found;
        }
        for y in 0..=self.height - 16 {
            for x in 0..=self.width - tw {
                let same = (0..16).all(|dy| {
                    let row = &self.pixels[(y + dy) * self.width + x..][..tw];
                    row == &sp[dy * sw..][..tw]
                });
                if same {
                    found.push((x, y));
                }
            }
        }
        found
    }
}

/// An uncompressed 24- or 32-bit BMP, as PIL writes it.
pub fn parse_bmp(b: &[u8]) -> Result<Image, String> {
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
            .ok_or_else(|| "short BMP header".to_string())
    };
    if b.get(..2) != Some(b"BM") {
        return Err("not a BMP".into());
    }
    let offset = u32_at(10)? as usize;
    let width = u32_at(18)? as usize;
    let raw_h = u32_at(22)? as i32;
    let bpp = b
        .get(28..30)
        .map(|w| u16::from_le_bytes([w[0], w[1]]))
        .unwrap_or(0);
    if u32_at(30)? != 0 || !(bpp == 24 || bpp == 32) {
        return Err(format!("compressed or {bpp}-bit BMP"));
    }
    let height = raw_h.unsigned_abs() as usize;
    let px = usize::from(bpp / 8);
    let stride = (width * px).div_ceil(4) * 4;
    let body = b
        .get(offset..offset + stride * height)
        .ok_or("short BMP body")?;
    let mut pixels = vec![0u32; width * height];
    for row in 0..height {
        let y = if raw_h > 0 { height - 1 - row } else { row };
        for x in 0..width {
            let p = &body[row * stride + x * px..][..3];
            pixels[y * width + x] = u32::from(p[2]) << 16 | u32::from(p[1]) << 8 | u32::from(p[0]);
        }
    }
    Ok(Image {
        width,
        height,
        pixels,
    })
}

/// An `xwd` dump (X Window Dump version 7) of a 24/32-bit TrueColor screen.
pub fn parse_xwd(b: &[u8]) -> Result<Image, String> {
    let word = |n: usize| -> Result<u32, String> {
        b.get(n * 4..n * 4 + 4)
            .map(|w| u32::from_be_bytes(w.try_into().unwrap()))
            .ok_or_else(|| "short XWD header".to_string())
    };
    let header_size = word(0)? as usize;
    if word(1)? != 7 || word(2)? != 2 {
        return Err("not a ZPixmap XWD v7".into());
    }
    let (width, height) = (word(4)? as usize, word(5)? as usize);
    let byte_order = word(7)?;
    let bpp = word(11)?;
    let stride = word(12)? as usize;
    let (rm, gm, bm) = (word(14)?, word(15)?, word(16)?);
    let ncolors = word(19)? as usize;
    if bpp != 32 {
        return Err(format!("{bpp} bits per pixel"));
    }
    let start = header_size + ncolors * 12;
    let body = b
        .get(start..start + stride * height)
        .ok_or("short XWD body")?;
    let channel = |v: u32, m: u32| ((v & m) >> m.trailing_zeros()) & 0xff;
    let mut pixels = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let p: [u8; 4] = body[y * stride + x * 4..][..4].try_into().unwrap();
            let v = if byte_order == 0 {
                u32::from_le_bytes(p)
            } else {
                u32::from_be_bytes(p)
            };
            pixels.push(channel(v, rm) << 16 | channel(v, gm) << 8 | channel(v, bm));
        }
    }
    Ok(Image {
        width,
        height,
        pixels,
    })
}
