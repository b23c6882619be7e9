//! `xenvt screen text`: reads a screenshot of the proxy's console view back into text.
//!
//! The console view draws each cell with the proxy's own 8x16 font, so a cell's
//! pixels name its character exactly: the cell's most common colour is its
//! background, the other pixels are the glyph, and the glyph is looked up in the
//! same font. The lab uses this to check, from a real viewer's screenshot, that a
//! domU's kernel messages reached the console view.
//!
//! The screenshot is a binary PPM (P6, maxval 255): vncdotool's Pillow writes it,
//! and it needs no image crate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use clap::Args;
use xenvt_proxy::console::font::{Font, Glyph, GLYPH_H, GLYPH_W};

/// Largest screenshot accepted (pixels), so a bad file cannot ask for unbounded memory.
const MAX_PIXELS: usize = 16 << 20;

/// `xenvt screen text`.
#[derive(Debug, Args)]
pub struct TextArgs {
    /// A binary PPM (P6) screenshot of a console view.
    pub file: PathBuf,
    /// Fail unless the screen contains this text (may be given several times; any one
    /// of them is enough).
    #[arg(long = "expect")]
    pub expect: Vec<String>,
}

/// An RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` pixels, row by row, as 0xRRGGBB.
    pub px: Vec<u32>,
}

/// Skips whitespace and `#` comments in a PPM header, then reads a decimal number.
fn header_number(d: &[u8], pos: &mut usize) -> anyhow::Result<usize> {
    loop {
        match d.get(*pos) {
            Some(b'#') => {
                while d.get(*pos).is_some_and(|&c| c != b'\n') {
                    *pos += 1;
                }
            }
            Some(c) if c.is_ascii_whitespace() => *pos += 1,
            Some(_) => break,
            None => bail!("truncated PPM header"),
        }
    }
    let start = *pos;
    while d.get(*pos).is_some_and(u8::is_ascii_digit) && *pos - start < 9 {
        *pos += 1;
    }
    ensure!(*pos > start, "bad number in PPM header");
    Ok(std::str::from_utf8(&d[start..*pos])?.parse()?)
}

/// Parses a binary PPM (P6) with a maxval of 255.
pub fn parse_ppm(d: &[u8]) -> anyhow::Result<Image> {
    ensure!(d.starts_with(b"P6"), "not a binary PPM (P6)");
    let mut pos = 2;
    let width = header_number(d, &mut pos)?;
    let height = header_number(d, &mut pos)?;
    let maxval = header_number(d, &mut pos)?;
    ensure!(maxval == 255, "PPM maxval {maxval}, want 255");
    ensure!(
        d.get(pos).is_some_and(u8::is_ascii_whitespace),
        "bad PPM header"
    );
    pos += 1;
    let n = width
        .checked_mul(height)
        .filter(|&n| n > 0 && n <= MAX_PIXELS)
        .context("PPM size out of range")?;
    let body = d
        .get(pos..pos + n * 3)
        .context("PPM pixel data truncated")?;
    let px = body
        .chunks_exact(3)
        .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
        .collect();
    Ok(Image { width, height, px })
}

/// Reads a PPM file.
pub fn read_ppm(p: &Path) -> anyhow::Result<Image> {
    let d = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
    parse_ppm(&d).with_context(|| p.display().to_string())
}

/// Glyph bitmaps of the printable characters, to their characters.
fn glyph_table(font: &Font) -> HashMap<Glyph, char> {
    let mut m = HashMap::new();
    // ASCII first, so a shape that Latin-1 repeats reads as ASCII.
    for c in (' '..='~').chain('\u{a1}'..='\u{ff}') {
        m.entry(*font.glyph(font.index(c))).or_insert(c);
    }
    m
}

/// The most common colour of a cell (its background).
fn background(img: &Image, x0: usize, y0: usize) -> u32 {
    let mut counts: Vec<(u32, u32)> = Vec::with_capacity(4);
    for y in y0..y0 + usize::from(GLYPH_H) {
        for x in x0..x0 + usize::from(GLYPH_W) {
            let c = img.px[y * img.width + x];
            match counts.iter_mut().find(|e| e.0 == c) {
                Some(e) => e.1 += 1,
                None => counts.push((c, 1)),
            }
        }
    }
    counts.iter().max_by_key(|e| e.1).map_or(0, |e| e.0)
}

/// The text of a console view: one line per row of cells, trailing spaces cut.
/// A cell whose shape is no printable character of the font reads as `?`.
pub fn read_text(img: &Image) -> Vec<String> {
    let font = Font::builtin();
    let table = glyph_table(font);
    let (cw, ch) = (usize::from(GLYPH_W), usize::from(GLYPH_H));
    let (cols, rows) = (img.width / cw, img.height / ch);
    let mut lines = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut line = String::with_capacity(cols);
        for c in 0..cols {
            let (x0, y0) = (c * cw, r * ch);
            let bg = background(img, x0, y0);
            let mut g: Glyph = [0; GLYPH_H as usize];
            for (dy, row) in g.iter_mut().enumerate() {
                for dx in 0..cw {
                    if img.px[(y0 + dy) * img.width + x0 + dx] != bg {
                        *row |= 0x80 >> dx;
                    }
                }
            }
            let mut ch = table.get(&g).copied();
            if ch.is_none() {
                // An underlined cell: the font's shape without the underline row.
                let mut plain = g;
                plain[usize::from(GLYPH_H) - 2] = 0;
                ch = table.get(&plain).copied();
            }
            line.push(ch.unwrap_or('?'));
        }
        lines.push(line.trim_end().to_owned());
    }
    lines
}

/// Runs `xenvt screen text`: prints the screen's text; with `--expect`, fails
/// unless one of the texts is on it.
pub fn run_text(a: TextArgs) -> anyhow::Result<()> {
    let img = read_ppm(&a.file)?;
    let lines = read_text(&img);
    for l in &lines {
        println!("{l}");
    }
    if !a.expect.is_empty() {
        let found = a
            .expect
            .iter()
            .find(|e| lines.iter().any(|l| l.contains(e.as_str())));
        match found {
            Some(e) => eprintln!("screen: found {e:?}"),
            None => bail!("none of {:?} is on the screen", a.expect),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws text the way the console view does: glyph pixels in `fg` on `bg`.
    fn render(lines: &[&str], cols: usize, fg: u32, bg: u32) -> Image {
        let font = Font::builtin();
        let (cw, ch) = (usize::from(GLYPH_W), usize::from(GLYPH_H));
        let (width, height) = (cols * cw, lines.len() * ch);
        let mut px = vec![bg; width * height];
        for (r, l) in lines.iter().enumerate() {
            for (c, chr) in l.chars().enumerate() {
                let g = font.glyph(font.index(chr));
                for (dy, bits) in g.iter().enumerate() {
                    for dx in 0..cw {
                        if bits & (0x80 >> dx) != 0 {
                            px[(r * ch + dy) * width + c * cw + dx] = fg;
                        }
                    }
                }
            }
        }
        Image { width, height, px }
    }

    fn ppm(img: &Image) -> Vec<u8> {
        let mut d = format!("P6\n# a comment\n{} {}\n255\n", img.width, img.height).into_bytes();
        for p in &img.px {
            d.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
        }
        d
    }

    #[test]
    fn reads_back_rendered_text_through_ppm() {
        let text = [
            "[    0.000000] Linux version 6.1.0-28-amd64",
            "",
            "Run /init as init process {}|~",
        ];
        let img = render(&text, 60, 0xaaaaaa, 0x000000);
        let back = parse_ppm(&ppm(&img)).unwrap();
        assert_eq!(back, img);
        assert_eq!(read_text(&back), text);
    }

    #[test]
    fn inverse_and_coloured_cells_read_the_same() {
        // Light background, dark glyphs: the majority colour is still the background.
        let img = render(&["hello, world"], 12, 0x202020, 0xe0e0e0);
        assert_eq!(read_text(&img), ["hello, world"]);
    }

    #[test]
    fn an_unknown_shape_reads_as_a_question_mark() {
        let mut img = render(&["ab"], 2, 0xffffff, 0);
        // A checkerboard in the second cell is no glyph of the font.
        for y in 0..16 {
            for x in 8..16 {
                img.px[y * 16 + x] = if (x + y) % 2 == 0 { 0xffffff } else { 0 };
            }
        }
        assert_eq!(read_text(&img), ["a?"]);
    }

    #[test]
    fn bad_ppm_files_are_refused() {
        assert!(parse_ppm(b"P3\n1 1\n255\n000").is_err());
        assert!(parse_ppm(b"P6\n2 2\n255\n\x00\x00\x00").is_err());
        assert!(parse_ppm(b"P6\n1 1\n65535\n\x00\x00\x00\x00\x00\x00").is_err());
        assert!(parse_ppm(b"P6\n99999999 99999999\n255\n").is_err());
        assert!(parse_ppm(b"P6\n0 1\n255\n").is_err());
        assert!(parse_ppm(b"P6").is_err());
    }
}
