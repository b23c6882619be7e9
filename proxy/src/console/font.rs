//! The 8x16 console font: Spleen (BSD-2-Clause), through the `spleen-font` crate's copy of
//! the PSF file, parsed once into a table we own.
//!
//! Spleen has every box-drawing character but only some block elements, so the rest of
//! U+2580..U+259F and the scan-line characters of DEC special graphics are made here from
//! their geometry; anything still missing shows as U+FFFD.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Glyph width in pixels.
pub const GLYPH_W: u16 = 8;
/// Glyph height in pixels.
pub const GLYPH_H: u16 = 16;

/// One glyph: a byte per row, the most significant bit leftmost.
pub type Glyph = [u8; GLYPH_H as usize];

/// A glyph table and the map from characters to it.
#[derive(Debug)]
pub struct Font {
    glyphs: Vec<Glyph>,
    ascii: [u16; 128],
    map: HashMap<char, u16>,
    fallback: u16,
}

/// Why font data was refused (only our own bundled data is parsed, so this is a build bug).
#[derive(Debug, PartialEq, Eq)]
pub struct BadFont(&'static str);

/// Glyphs and (character, glyph index) pairs.
type Parsed = (Vec<Glyph>, Vec<(char, u16)>);

fn parse_psf1(d: &[u8]) -> Result<Parsed, BadFont> {
    let mode = d[2];
    let size = usize::from(d[3]);
    if size != usize::from(GLYPH_H) {
        return Err(BadFont("PSF1 glyph height"));
    }
    let n = if mode & 1 != 0 { 512 } else { 256 };
    let end = 4 + n * size;
    let body = d.get(4..end).ok_or(BadFont("PSF1 truncated"))?;
    let glyphs = body
        .chunks_exact(size)
        .map(|c| {
            let mut g = [0u8; GLYPH_H as usize];
            g.copy_from_slice(c);
            g
        })
        .collect();
    let mut map = Vec::new();
    if mode & 0x06 != 0 {
        let mut glyph = 0u16;
        let mut in_seq = false;
        for w in d[end..].chunks_exact(2) {
            match u16::from_le_bytes([w[0], w[1]]) {
                0xffff => {
                    glyph += 1;
                    in_seq = false;
                }
                0xfffe => in_seq = true,
                cp if !in_seq => {
                    if let Some(c) = char::from_u32(u32::from(cp)) {
                        map.push((c, glyph));
                    }
                }
                _ => {}
            }
        }
    } else {
        for i in 0..n as u16 {
            map.push((char::from(i as u8), i));
        }
    }
    Ok((glyphs, map))
}

fn parse_psf2(d: &[u8]) -> Result<Parsed, BadFont> {
    let word = |i: usize| -> Result<usize, BadFont> {
        let b = d.get(i..i + 4).ok_or(BadFont("PSF2 header"))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (hsize, flags, n, bpg, h, w) = (
        word(8)?,
        word(12)?,
        word(16)?,
        word(20)?,
        word(24)?,
        word(28)?,
    );
    if h != usize::from(GLYPH_H) || w != usize::from(GLYPH_W) || bpg != usize::from(GLYPH_H) {
        return Err(BadFont("PSF2 glyph size"));
    }
    if n > usize::from(u16::MAX) {
        return Err(BadFont("PSF2 glyph count"));
    }
    let end = n
        .checked_mul(bpg)
        .and_then(|b| b.checked_add(hsize))
        .ok_or(BadFont("PSF2 size"))?;
    let body = d.get(hsize..end).ok_or(BadFont("PSF2 truncated"))?;
    let glyphs = body
        .chunks_exact(bpg)
        .map(|c| {
            let mut g = [0u8; GLYPH_H as usize];
            g.copy_from_slice(c);
            g
        })
        .collect();
    let mut map = Vec::new();
    if flags & 1 != 0 {
        for (glyph, entry) in d[end..].split(|&b| b == 0xff).take(n).enumerate() {
            let single = entry.split(|&b| b == 0xfe).next().unwrap_or_default();
            for c in String::from_utf8_lossy(single).chars() {
                map.push((c, glyph as u16));
            }
        }
    } else {
        for i in 0..n.min(256) as u16 {
            map.push((char::from(i as u8), i));
        }
    }
    Ok((glyphs, map))
}

/// Fills rows `y0..y1` and columns `x0..x1` of a glyph.
fn block(g: &mut Glyph, x0: u8, x1: u8, y0: usize, y1: usize) {
    let mask = (0xffu16 >> x0) as u8 & !((0xffu16 >> x1) as u8);
    for row in &mut g[y0..y1] {
        *row |= mask;
    }
}

/// The geometric glyph for a block element or scan line, if it is one.
fn synthesise(c: char) -> Option<Glyph> {
    let mut g = [0u8; GLYPH_H as usize];
    let (h, w) = (usize::from(GLYPH_H), GLYPH_W);
    let (hh, hw) = (h / 2, w / 2);
    match c {
        '▀' => block(&mut g, 0, 8, 0, hh),
        '\u{2581}'..='\u{2588}' => {
            let eighths = c as usize - 0x2580;
            block(&mut g, 0, 8, h - eighths * 2, h);
        }
        '\u{2589}'..='\u{258f}' => {
            let eighths = (0x2590 - c as u32) as u8;
            block(&mut g, 0, eighths, 0, h);
        }
        '▐' => block(&mut g, hw as u8, 8, 0, h),
        '░' | '▒' | '▓' => {
            for (y, row) in g.iter_mut().enumerate() {
                *row = match c {
                    '░' => [0x88, 0x00, 0x22, 0x00][y % 4],
                    '▒' => [0xaa, 0x55][y % 2],
                    _ => [0x77, 0xff, 0xdd, 0xff][y % 4],
                };
            }
        }
        '▔' => block(&mut g, 0, 8, 0, 2),
        '▕' => block(&mut g, 7, 8, 0, h),
        '\u{2596}'..='\u{259f}' => {
            // Quadrants as bits: upper left, upper right, lower left, lower right.
            const Q: [u8; 10] = [
                0b0010, 0b0001, 0b1000, 0b1011, 0b1001, 0b1110, 0b1101, 0b0100, 0b0110, 0b0111,
            ];
            let q = Q[c as usize - 0x2596];
            let hw = hw as u8;
            if q & 0b1000 != 0 {
                block(&mut g, 0, hw, 0, hh);
            }
            if q & 0b0100 != 0 {
                block(&mut g, hw, 8, 0, hh);
            }
            if q & 0b0010 != 0 {
                block(&mut g, 0, hw, hh, h);
            }
            if q & 0b0001 != 0 {
                block(&mut g, hw, 8, hh, h);
            }
        }
        '⎺' => block(&mut g, 0, 8, 1, 2),
        '⎻' => block(&mut g, 0, 8, 5, 6),
        '⎼' => block(&mut g, 0, 8, 10, 11),
        '⎽' => block(&mut g, 0, 8, 14, 15),
        _ => return None,
    }
    Some(g)
}

impl Font {
    /// Parses PSF1 or PSF2 data with 8x16 glyphs.
    pub fn from_psf(d: &[u8]) -> Result<Self, BadFont> {
        let (mut glyphs, pairs) = match d {
            [0x36, 0x04, _, _, ..] => parse_psf1(d)?,
            [0x72, 0xb5, 0x4a, 0x86, ..] => parse_psf2(d)?,
            _ => return Err(BadFont("not a PSF font")),
        };
        let mut map = HashMap::with_capacity(pairs.len());
        for (c, g) in pairs {
            if usize::from(g) < glyphs.len() {
                map.entry(c).or_insert(g);
            }
        }
        let blocks = ('\u{2580}'..='\u{259f}').chain(['⎺', '⎻', '⎼', '⎽']);
        for c in blocks {
            if map.contains_key(&c) {
                continue;
            }
            if let Some(g) = synthesise(c) {
                let idx = u16::try_from(glyphs.len()).map_err(|_| BadFont("too many glyphs"))?;
                glyphs.push(g);
                map.insert(c, idx);
            }
        }
        let fallback = match map.get(&'\u{fffd}').or_else(|| map.get(&'?')) {
            Some(&g) => g,
            None => {
                let idx = u16::try_from(glyphs.len()).map_err(|_| BadFont("too many glyphs"))?;
                let mut g = [0u8; GLYPH_H as usize];
                block(&mut g, 1, 7, 2, 14);
                glyphs.push(g);
                idx
            }
        };
        let mut ascii = [fallback; 128];
        for (i, slot) in ascii.iter_mut().enumerate() {
            if let Some(&g) = map.get(&char::from(i as u8)) {
                *slot = g;
            }
        }
        Ok(Font {
            glyphs,
            ascii,
            map,
            fallback,
        })
    }

    /// The bundled Spleen 8x16, parsed on first use.
    pub fn builtin() -> &'static Font {
        static FONT: OnceLock<Font> = OnceLock::new();
        FONT.get_or_init(|| {
            Font::from_psf(spleen_font::FONT_8X16).unwrap_or_else(|e| {
                // The data is compiled in; failing here is a build defect, caught by tests.
                panic!("bundled console font is unusable: {}", e.0)
            })
        })
    }

    /// The glyph index for a character (the fallback when the font lacks it).
    pub fn index(&self, c: char) -> u16 {
        if (c as u32) < 128 {
            return self.ascii[c as usize];
        }
        self.map.get(&c).copied().unwrap_or(self.fallback)
    }

    /// True when the font has its own glyph for `c`.
    pub fn has(&self, c: char) -> bool {
        self.map.contains_key(&c)
    }

    /// The glyph at an index from [`Font::index`].
    pub fn glyph(&self, idx: u16) -> &Glyph {
        self.glyphs
            .get(usize::from(idx))
            .unwrap_or(&self.glyphs[usize::from(self.fallback)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_covers_console_repertoire() {
        let f = Font::builtin();
        for c in (' '..='~').chain('\u{a0}'..='\u{ff}') {
            assert!(f.has(c), "missing {c:?}");
        }
        for c in '\u{2500}'..='\u{259f}' {
            assert!(f.has(c), "missing {c:?}");
        }
        for b in 0x5fu8..=0x7e {
            let c = super::super::filter::dec_graphics(b).unwrap();
            // Control pictures and ≠ may fall back; the drawing characters may not.
            if matches!(b, 0x6a..=0x78) {
                assert!(f.has(c), "missing DEC {c:?}");
            }
        }
        assert_ne!(f.index('A'), f.index('B'));
        assert_eq!(f.index('\u{10ffff}'), f.index('\u{fffd}'));
    }

    #[test]
    fn glyph_shapes() {
        let f = Font::builtin();
        assert!(f.glyph(f.index(' ')).iter().all(|&r| r == 0));
        assert!(f.glyph(f.index('█')).iter().all(|&r| r == 0xff));
        let horiz = f.glyph(f.index('─'));
        assert!(horiz.contains(&0xff), "{horiz:?}");
        let lower = f.glyph(f.index('▁'));
        assert_eq!(lower[..14], [0; 14]);
        assert_eq!(lower[14..], [0xff, 0xff]);
        let quad = f.glyph(f.index('▚'));
        assert_eq!(quad[0], 0xf0);
        assert_eq!(quad[15], 0x0f);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Font::from_psf(b"nope").is_err());
        assert!(Font::from_psf(&[0x36, 0x04, 0x00, 0x10, 1, 2]).is_err());
        assert!(Font::from_psf(&[0x72, 0xb5, 0x4a, 0x86]).is_err());
    }
}
