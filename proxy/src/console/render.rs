//! Colours and drawing cells into a framebuffer.
//!
//! The screen is resolved into a grid of [`VisCell`]s (everything that decides a cell's
//! pixels); comparing that grid with the previous one is what limits drawing to the cells
//! that changed.

use super::font::{Font, GLYPH_H, GLYPH_W};
use crate::rfb::{Framebuffer, Rect};

/// The 16 console colours: the VGA text-mode palette (the Linux console's defaults).
pub const BASE16: [u32; 16] = [
    0x000000, 0xaa0000, 0x00aa00, 0xaa5500, 0x0000aa, 0xaa00aa, 0x00aaaa, 0xaaaaaa, 0x555555,
    0xff5555, 0x55ff55, 0xffff55, 0x5555ff, 0xff55ff, 0x55ffff, 0xffffff,
];

/// Default foreground index (light grey, as on a VGA console).
pub const DEFAULT_FG: u8 = 7;
/// Default background index.
pub const DEFAULT_BG: u8 = 0;

/// An xterm 256-colour index as `0x00RRGGBB`.
pub fn xterm256(i: u8) -> u32 {
    match i {
        0..=15 => BASE16[usize::from(i)],
        16..=231 => {
            const LEVEL: [u32; 6] = [0, 95, 135, 175, 215, 255];
            let i = u32::from(i - 16);
            (LEVEL[(i / 36) as usize] << 16)
                | (LEVEL[(i / 6 % 6) as usize] << 8)
                | LEVEL[(i % 6) as usize]
        }
        232..=255 => {
            let v = 8 + 10 * u32::from(i - 232);
            (v << 16) | (v << 8) | v
        }
    }
}

/// Everything that decides a cell's pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VisCell {
    /// Index into the font.
    pub glyph: u16,
    /// Foreground `0x00RRGGBB`.
    pub fg: u32,
    /// Background `0x00RRGGBB`.
    pub bg: u32,
    /// Underlined.
    pub underline: bool,
}

impl VisCell {
    /// An empty cell in default colours.
    pub fn blank(font: &Font) -> Self {
        VisCell {
            glyph: font.index(' '),
            fg: BASE16[usize::from(DEFAULT_FG)],
            bg: BASE16[usize::from(DEFAULT_BG)],
            underline: false,
        }
    }
}

fn colour(c: vt100::Color, default: u8, bright: bool) -> u32 {
    match c {
        vt100::Color::Default => {
            let i = if bright { default | 8 } else { default };
            BASE16[usize::from(i)]
        }
        vt100::Color::Idx(i) if bright && i < 8 => BASE16[usize::from(i + 8)],
        vt100::Color::Idx(i) => xterm256(i),
        vt100::Color::Rgb(r, g, b) => (u32::from(r) << 16) | (u32::from(g) << 8) | u32::from(b),
    }
}

/// Resolves one emulator cell; `cursor` draws it as a block cursor (colours swapped).
pub fn resolve(font: &Font, cell: Option<&vt100::Cell>, cursor: bool) -> VisCell {
    let mut v = match cell {
        None => VisCell::blank(font),
        Some(cell) => {
            let ch = if cell.is_wide_continuation() {
                ' '
            } else {
                cell.contents().chars().next().unwrap_or(' ')
            };
            let mut fg = colour(cell.fgcolor(), DEFAULT_FG, cell.bold());
            let mut bg = colour(cell.bgcolor(), DEFAULT_BG, false);
            if cell.inverse() {
                std::mem::swap(&mut fg, &mut bg);
            }
            VisCell {
                glyph: font.index(ch),
                fg,
                bg,
                underline: cell.underline(),
            }
        }
    };
    if cursor {
        std::mem::swap(&mut v.fg, &mut v.bg);
    }
    v
}

/// Draws one cell at grid position (`col`, `row`); the framebuffer must hold the grid.
pub fn draw_cell(fb: &mut Framebuffer, font: &Font, col: u16, row: u16, v: &VisCell) {
    let stride = usize::from(fb.width());
    let x0 = usize::from(col) * usize::from(GLYPH_W);
    let y0 = usize::from(row) * usize::from(GLYPH_H);
    let glyph = font.glyph(v.glyph);
    let px = fb.pixels_mut();
    for (dy, &bits) in glyph.iter().enumerate() {
        let bits = if v.underline && dy == usize::from(GLYPH_H) - 2 {
            0xff
        } else {
            bits
        };
        let start = (y0 + dy) * stride + x0;
        let Some(line) = px.get_mut(start..start + usize::from(GLYPH_W)) else {
            return;
        };
        for (dx, p) in line.iter_mut().enumerate() {
            *p = if bits & (0x80 >> dx) != 0 { v.fg } else { v.bg };
        }
    }
}

/// Collects changed cells into rectangles: runs along a row (short gaps of unchanged cells
/// are bridged, as a few extra pixels cost less than another rectangle header), then runs
/// with the same columns on consecutive rows are joined.
#[derive(Debug, Default)]
pub struct Damage {
    rects: Vec<Rect>,
    /// Rects whose bottom edge is the top of the next row: they may still grow.
    open: Vec<usize>,
}

/// Unchanged cells a row run may bridge.
const GAP: u16 = 3;

impl Damage {
    /// Adds the changed columns of `row` (ascending); rows come top to bottom.
    pub fn row(&mut self, row: u16, changed: &[u16]) {
        let y = row * GLYPH_H;
        let mut runs: Vec<(u16, u16)> = Vec::new();
        for &c in changed {
            match runs.last_mut() {
                Some((_, end)) if c <= *end + GAP => *end = c + 1,
                _ => runs.push((c, c + 1)),
            }
        }
        let mut open = Vec::with_capacity(runs.len());
        for (s, e) in runs {
            let (x, w) = (s * GLYPH_W, (e - s) * GLYPH_W);
            let hit = self.open.iter().copied().find(|&i| {
                let r = &self.rects[i];
                r.x == x && r.w == w && r.y + r.h == y
            });
            match hit {
                Some(i) => {
                    self.rects[i].h += GLYPH_H;
                    open.push(i);
                }
                None => {
                    open.push(self.rects.len());
                    self.rects.push(Rect::new(x, y, w, GLYPH_H));
                }
            }
        }
        self.open = open;
    }

    /// The rectangles, top to bottom.
    pub fn finish(mut self) -> Vec<Rect> {
        self.rects.sort_by_key(|r| (r.y, r.x));
        self.rects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_points() {
        assert_eq!(xterm256(1), 0xaa0000);
        assert_eq!(xterm256(16), 0x000000);
        assert_eq!(xterm256(196), 0xff0000);
        assert_eq!(xterm256(21), 0x0000ff);
        assert_eq!(xterm256(231), 0xffffff);
        assert_eq!(xterm256(232), 0x080808);
        assert_eq!(xterm256(255), 0xeeeeee);
    }

    #[test]
    fn damage_merges_rows_and_columns() {
        let mut d = Damage::default();
        d.row(0, &[0, 1, 2, 3]);
        d.row(1, &[0, 1, 2, 3]);
        d.row(2, &[0, 1, 2, 3]);
        assert_eq!(d.finish(), vec![Rect::new(0, 0, 32, 48)]);

        let mut d = Damage::default();
        d.row(0, &[1, 4, 20]);
        assert_eq!(
            d.finish(),
            vec![Rect::new(8, 0, 32, 16), Rect::new(160, 0, 8, 16)]
        );

        let mut d = Damage::default();
        d.row(0, &[0, 10]);
        d.row(1, &[10]);
        d.row(2, &[]);
        d.row(3, &[10]);
        assert_eq!(
            d.finish(),
            vec![
                Rect::new(0, 0, 8, 16),
                Rect::new(80, 0, 8, 32),
                Rect::new(80, 48, 8, 16)
            ]
        );
    }
}
