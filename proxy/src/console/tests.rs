//! Console behaviour: emulation as drawn, damage, scrollback, keys and paste.

use super::render::{xterm256, BASE16};
use super::*;

fn console(cols: u16, rows: u16) -> Console {
    Console::new(&ConsoleConfig {
        cols,
        rows,
        ..ConsoleConfig::default()
    })
    .unwrap()
}

fn fb_for(c: &Console) -> Framebuffer {
    let (w, h) = c.size_px();
    Framebuffer::new(w, h).unwrap()
}

/// The (foreground, background) a drawn cell shows, read back from its pixels: the
/// background is the top-left pixel (blank in every glyph we test), the foreground any
/// other colour present.
fn cell_colours(fb: &Framebuffer, col: u16, row: u16) -> (Option<u32>, u32) {
    let (x0, y0) = (col * 8, row * 16);
    let bg = fb.get(x0, y0).unwrap();
    let mut fg = None;
    for y in y0..y0 + 16 {
        for x in x0..x0 + 8 {
            let p = fb.get(x, y).unwrap();
            if p != bg {
                fg = Some(p);
            }
        }
    }
    (fg, bg)
}

/// The cell's pixels as a glyph bitmap (set where the pixel is `fg`).
fn cell_bits(fb: &Framebuffer, col: u16, row: u16, fg: u32) -> [u8; 16] {
    let mut g = [0u8; 16];
    for (dy, bits) in g.iter_mut().enumerate() {
        for dx in 0..8u16 {
            if fb.get(col * 8 + dx, row * 16 + dy as u16) == Some(fg) {
                *bits |= 0x80 >> dx;
            }
        }
    }
    g
}

fn text(c: &Console, row: u16) -> String {
    c.screen()
        .rows(0, c.config().cols)
        .nth(usize::from(row))
        .unwrap()
}

#[test]
fn config_is_checked() {
    for bad in [
        ConsoleConfig {
            cols: 0,
            ..Default::default()
        },
        ConsoleConfig {
            rows: MAX_ROWS + 1,
            ..Default::default()
        },
        ConsoleConfig {
            cols: MAX_COLS + 1,
            ..Default::default()
        },
        ConsoleConfig {
            scrollback: MAX_SCROLLBACK + 1,
            ..Default::default()
        },
    ] {
        assert!(
            matches!(Console::new(&bad), Err(Error::ConsoleConfig(_))),
            "{bad:?}"
        );
    }
    let c = Console::new(&ConsoleConfig::default()).unwrap();
    assert_eq!(c.size_px(), (640, 400));
}

#[test]
fn colours_are_drawn() {
    let mut c = console(20, 3);
    let mut fb = fb_for(&c);
    // Hide the cursor so it does not invert a cell under test.
    c.feed(b"\x1b[?25l");
    c.feed(b"\x1b[31mA\x1b[1;32mB\x1b[0;38;5;196mC\x1b[38;2;1;2;3;48;2;4;5;6mD");
    c.feed(b"\x1b[0;7mE\x1b[0;1mF\x1b[0;44;93mG\x1b[0m\x1b[48;5;240m \x1b[0m");
    c.render(&mut fb).unwrap();
    assert_eq!(cell_colours(&fb, 0, 0), (Some(BASE16[1]), BASE16[0]));
    assert_eq!(
        cell_colours(&fb, 1, 0),
        (Some(BASE16[10]), BASE16[0]),
        "bold is bright"
    );
    assert_eq!(cell_colours(&fb, 2, 0), (Some(0xff0000), BASE16[0]));
    assert_eq!(cell_colours(&fb, 3, 0), (Some(0x010203), 0x040506));
    assert_eq!(
        cell_colours(&fb, 4, 0),
        (Some(BASE16[0]), BASE16[7]),
        "inverse"
    );
    assert_eq!(
        cell_colours(&fb, 5, 0),
        (Some(BASE16[15]), BASE16[0]),
        "bold default"
    );
    assert_eq!(cell_colours(&fb, 6, 0), (Some(BASE16[11]), BASE16[4]));
    assert_eq!(cell_colours(&fb, 7, 0), (None, xterm256(240)));
    assert_eq!(cell_colours(&fb, 8, 0), (None, BASE16[0]));
    // The glyph drawn is the font's.
    let font = font::Font::builtin();
    assert_eq!(
        cell_bits(&fb, 0, 0, BASE16[1]),
        *font.glyph(font.index('A'))
    );
}

#[test]
fn underline_and_cursor() {
    let mut c = console(10, 2);
    let mut fb = fb_for(&c);
    c.feed(b"\x1b[4m_\x1b[0m \x1b[4m \x1b[0mx");
    c.render(&mut fb).unwrap();
    // An underlined space has exactly its underline row set.
    let bits = cell_bits(&fb, 2, 0, BASE16[7]);
    assert_eq!(bits.iter().filter(|&&b| b == 0xff).count(), 1);
    assert_eq!(bits[14], 0xff);
    // The cursor (after "x", at column 4) is a block: inverse of a blank cell.
    assert_eq!(cell_colours(&fb, 4, 0), (None, BASE16[7]));
    c.feed(b"\x1b[?25l");
    let d = c.render(&mut fb).unwrap();
    assert_eq!(d, vec![Rect::new(32, 0, 8, 16)]);
    assert_eq!(cell_colours(&fb, 4, 0), (None, BASE16[0]));
}

#[test]
fn line_drawing_renders_box_glyphs() {
    let mut c = console(10, 3);
    let mut fb = fb_for(&c);
    c.feed(b"\x1b[?25l\x1b(0lqk\r\nx x\r\nmqj\x1b(B q");
    assert_eq!(text(&c, 0).trim_end(), "┌─┐");
    assert_eq!(text(&c, 1).trim_end(), "│ │");
    assert_eq!(text(&c, 2).trim_end(), "└─┘ q");
    c.render(&mut fb).unwrap();
    let font = font::Font::builtin();
    for (col, row, ch) in [(0, 0, '┌'), (1, 0, '─'), (2, 2, '┘'), (0, 1, '│')] {
        assert_eq!(
            cell_bits(&fb, col, row, BASE16[7]),
            *font.glyph(font.index(ch)),
            "{ch}"
        );
    }
    // Unicode box drawing works as well.
    c.feed("\r\n╔═╗▒".as_bytes());
}

#[test]
fn one_changed_char_damages_one_cell() {
    let mut c = console(80, 25);
    let mut fb = fb_for(&c);
    c.feed(b"hello world\r\nsecond line");
    let first = c.render(&mut fb).unwrap();
    assert_eq!(first, vec![Rect::new(0, 0, 640, 400)]);
    assert!(c.render(&mut fb).unwrap().is_empty(), "nothing changed");
    // Overwrite one character away from the cursor; the cursor does not move.
    c.feed(b"\x1b7\x1b[1;5HX\x1b8");
    let d = c.render(&mut fb).unwrap();
    assert_eq!(d, vec![Rect::new(4 * 8, 0, 8, 16)]);
    // Typing one character changes that cell and the cursor's old and new cells.
    c.feed(b"!");
    let d = c.render(&mut fb).unwrap();
    assert_eq!(d, vec![Rect::new(11 * 8, 16, 16, 16)]);
    // The framebuffer equals a fresh full render.
    let mut fresh = fb_for(&c);
    c.full_redraw(&mut fresh).unwrap();
    assert_eq!(fresh, fb);
}

#[test]
fn wrong_size_framebuffer_is_resized_and_redrawn() {
    let mut c = console(10, 2);
    let mut fb = Framebuffer::new(1, 1).unwrap();
    let d = c.render(&mut fb).unwrap();
    assert_eq!((fb.width(), fb.height()), (80, 32));
    assert_eq!(d, vec![Rect::new(0, 0, 80, 32)]);
    c.resize(12, 3).unwrap();
    let d = c.render(&mut fb).unwrap();
    assert_eq!(d, vec![Rect::new(0, 0, 96, 48)]);
    assert!(c.resize(0, 3).is_err());
}

#[test]
fn scrollback_moves_and_any_key_returns() {
    let mut c = Console::new(&ConsoleConfig {
        cols: 20,
        rows: 4,
        scrollback: 10,
        ..Default::default()
    })
    .unwrap();
    for i in 0..30 {
        c.feed(format!("line {i}\r\n").as_bytes());
    }
    assert_eq!(text(&c, 0).trim_end(), "line 27");
    assert_eq!(c.key(keys::sym::SHIFT_L, true), b"");
    assert_eq!(c.key(keys::sym::PAGE_UP, true), b"");
    assert_eq!(c.key(keys::sym::PAGE_UP, false), b"");
    assert_eq!(c.scroll_offset(), 2);
    assert_eq!(text(&c, 0).trim_end(), "line 25");
    for _ in 0..20 {
        c.key(keys::sym::PAGE_UP, true);
    }
    // Capped by the scrollback size.
    assert_eq!(c.scroll_offset(), 10);
    assert_eq!(text(&c, 0).trim_end(), "line 17");
    // Scrolled back the cursor is not drawn, and output keeps the view where it is.
    c.feed(b"more\r\n");
    assert_eq!(c.scroll_offset(), 10);
    c.key(keys::sym::PAGE_DOWN, true);
    assert_eq!(c.scroll_offset(), 8);
    c.key(keys::sym::SHIFT_L, false);
    assert_eq!(c.key(u32::from(b'q'), true), b"q");
    assert_eq!(c.scroll_offset(), 0);
    assert_eq!(text(&c, 0).trim_end(), "line 28");
}

#[test]
fn scrollback_is_bounded() {
    let mut c = Console::new(&ConsoleConfig {
        cols: 10,
        rows: 5,
        scrollback: 7,
        ..Default::default()
    })
    .unwrap();
    for _ in 0..10_000 {
        c.feed(b"x\r\n");
    }
    assert_eq!(c.screen().scrollback_len(), 7);
}

#[test]
fn application_cursor_mode_follows_guest() {
    let mut c = console(10, 2);
    assert_eq!(c.key(keys::sym::UP, true), b"\x1b[A");
    c.feed(b"\x1b[?1h");
    assert_eq!(c.key(keys::sym::UP, true), b"\x1bOA");
    c.feed(b"\x1b[?1l");
    assert_eq!(c.key(keys::sym::UP, true), b"\x1b[A");
}

#[test]
fn modifiers_are_tracked_and_released() {
    let mut c = console(10, 2);
    c.key(keys::sym::CONTROL_R, true);
    assert_eq!(c.key(u32::from(b'c'), true), b"\x03");
    assert_eq!(c.key(u32::from(b'c'), false), b"");
    c.key(keys::sym::CONTROL_R, false);
    assert_eq!(c.key(u32::from(b'c'), true), b"c");
    c.key(keys::sym::ALT_L, true);
    c.release_modifiers();
    assert_eq!(c.key(u32::from(b'c'), true), b"c");
}

#[test]
fn paste() {
    let mut c = console(10, 2);
    assert_eq!(c.paste("a\r\nb\nc\u{1b}[201~\td"), b"a\rb\rc[201~\td");
    assert_eq!(c.paste_latin1(b"caf\xe9\n"), "café\r".as_bytes());
    c.feed(b"\x1b[?2004h");
    assert_eq!(c.paste("x\u{1b}[201~y"), b"\x1b[200~x[201~y\x1b[201~");
}

#[test]
fn title_is_kept_bounded_and_clean() {
    let mut c = console(10, 2);
    assert_eq!(c.title(), None);
    c.feed(b"\x1b]2;root@guest: ~\x07");
    assert_eq!(c.title().as_deref(), Some("root@guest: ~"));
    let mut long = b"\x1b]0;".to_vec();
    long.extend(std::iter::repeat_n(b'a', 10_000));
    long.extend_from_slice(b"\x1b\\after");
    c.feed(&long);
    assert!(c.title().unwrap().chars().count() <= MAX_TITLE);
    assert_eq!(text(&c, 0).trim_end(), "after");
}

#[test]
fn queries_are_answered_and_bounded() {
    let mut c = console(20, 5);
    c.feed(b"\x1b[3;7H\x1b[6n\x1b[5n\x1b[c");
    assert_eq!(c.take_replies(), b"\x1b[3;7R\x1b[0n\x1b[?6c");
    assert!(c.take_replies().is_empty());
    for _ in 0..10_000 {
        c.feed(b"\x1b[6n");
    }
    assert!(c.take_replies().len() <= MAX_REPLIES);
}

#[test]
fn alternate_screen_restores() {
    let mut c = console(20, 3);
    let mut fb = fb_for(&c);
    c.feed(b"shell$ ");
    c.render(&mut fb).unwrap();
    let before = fb.clone();
    c.feed(b"\x1b[?1049h\x1b[2J\x1b[Hvi stuff");
    c.render(&mut fb).unwrap();
    assert_eq!(text(&c, 0).trim_end(), "vi stuff");
    c.feed(b"\x1b[?1049l");
    c.render(&mut fb).unwrap();
    assert_eq!(fb, before);
}

#[test]
fn scrolling_region() {
    let mut c = console(10, 5);
    c.feed(b"top\r\n1\r\n2\r\n3\r\nbottom");
    // Region rows 2..4; scrolling inside it keeps the top and bottom lines.
    c.feed(b"\x1b[2;4r\x1b[4;1H\nnew");
    assert_eq!(text(&c, 0).trim_end(), "top");
    assert_eq!(text(&c, 1).trim_end(), "2");
    assert_eq!(text(&c, 3).trim_end(), "new");
    assert_eq!(text(&c, 4).trim_end(), "bottom");
}

#[test]
fn hostile_bytes_do_not_panic() {
    let mut c = console(80, 25);
    let mut fb = fb_for(&c);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..16 {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        c.feed(&buf);
        c.render(&mut fb).unwrap();
    }
    let mut fresh = fb_for(&c);
    c.full_redraw(&mut fresh).unwrap();
    assert_eq!(fresh, fb);
}
