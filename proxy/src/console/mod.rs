//! The console view: a domain's text console drawn as a framebuffer (a "VNC terminal").
//!
//! [`Console`] is sans-IO: feed it console output, render it into a [`Framebuffer`], and
//! turn key events and pastes into bytes for the guest. [`source`] reads a pty or a unix
//! socket with a byte budget, and [`log`] keeps a size-bounded log per domain. All state is
//! bounded whatever the guest writes: the scrollback has a cap, escape strings are capped
//! by [`filter`], and replies to terminal queries are capped.

pub mod filter;
pub mod font;
pub mod keys;
pub mod log;
pub mod render;
pub mod source;

use std::num::NonZeroU16;

use crate::rfb::{Framebuffer, Rect};
use font::{Font, GLYPH_H, GLYPH_W};
pub use keys::{KeyAction, KeyFlavour, Modifiers};
use render::{Damage, VisCell};

/// Widest grid we accept: keeps the framebuffer width within `u16`.
pub const MAX_COLS: u16 = 1000;
/// Tallest grid we accept.
pub const MAX_ROWS: u16 = 500;
/// Most scrollback lines we accept (each line costs `cols * 32` bytes).
pub const MAX_SCROLLBACK: usize = 100_000;
/// Longest window title kept, in characters.
pub const MAX_TITLE: usize = 256;
/// Most bytes of pending replies to terminal queries kept for the guest.
pub const MAX_REPLIES: usize = 4096;

pub use crate::error::{Error, Result};

/// How a console looks and behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Columns (1..=[`MAX_COLS`]).
    pub cols: u16,
    /// Rows (1..=[`MAX_ROWS`]).
    pub rows: u16,
    /// Lines kept above the screen (at most [`MAX_SCROLLBACK`]).
    pub scrollback: usize,
    /// Which terminal's key encoding the guest expects.
    pub keys: KeyFlavour,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            cols: 80,
            rows: 25,
            scrollback: 1000,
            keys: KeyFlavour::Xterm,
        }
    }
}

impl ConsoleConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_COLS).contains(&self.cols) {
            return Err(Error::ConsoleConfig("cols out of range"));
        }
        if !(1..=MAX_ROWS).contains(&self.rows) {
            return Err(Error::ConsoleConfig("rows out of range"));
        }
        if self.scrollback > MAX_SCROLLBACK {
            return Err(Error::ConsoleConfig("scrollback too large"));
        }
        Ok(())
    }
}

/// Emulator callbacks: the title and the answers to queries the guest makes.
#[derive(Debug, Default)]
struct Hooks {
    title: Option<String>,
    replies: Vec<u8>,
}

impl Hooks {
    fn reply(&mut self, bytes: &[u8]) {
        if self.replies.len() + bytes.len() <= MAX_REPLIES {
            self.replies.extend_from_slice(bytes);
        }
    }
}

impl vt100::Callbacks for Hooks {
    fn set_window_title(&mut self, _: &mut vt100::Screen, title: &[u8]) {
        let t: String = String::from_utf8_lossy(title)
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_TITLE)
            .collect();
        self.title = Some(t);
    }

    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        let p0 = params.first().and_then(|p| p.first()).copied().unwrap_or(0);
        match (i1, c, p0) {
            // Device status: "OK".
            (None, 'n', 5) => self.reply(b"\x1b[0n"),
            // Cursor position report, 1-based.
            (None, 'n', 6) => {
                let (r, c) = screen.cursor_position();
                let (_, cols) = screen.size();
                let c = c.min(cols.get() - 1);
                self.reply(format!("\x1b[{};{}R", r + 1, c + 1).as_bytes());
            }
            // Primary device attributes: a VT102.
            (None, 'c', 0) => self.reply(b"\x1b[?6c"),
            // Secondary device attributes.
            (Some(b'>'), 'c', 0) => self.reply(b"\x1b[>0;0;0c"),
            _ => {}
        }
    }
}

/// One domain's console: emulator, key state and the last drawn grid.
pub struct Console {
    parser: vt100::Parser<Hooks>,
    filter: filter::Filter,
    scratch: Vec<u8>,
    cfg: ConsoleConfig,
    font: &'static Font,
    mods: Modifiers,
    /// The grid as last drawn; empty when the framebuffer must be drawn whole.
    prev: Vec<VisCell>,
    cur: Vec<VisCell>,
    /// Output was fed since the last render. Kept here, not by the caller, so that a
    /// caller whose read future is cancelled after feeding still sees it.
    unrendered: bool,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn nz(v: u16) -> NonZeroU16 {
    NonZeroU16::new(v).unwrap_or(NonZeroU16::MIN)
}

impl Console {
    /// A blank console; the configuration is validated.
    pub fn new(cfg: &ConsoleConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Console {
            parser: vt100::Parser::new_with_callbacks(
                nz(cfg.rows),
                nz(cfg.cols),
                cfg.scrollback,
                Hooks::default(),
            ),
            filter: filter::Filter::new(),
            scratch: Vec::new(),
            cfg: cfg.clone(),
            font: Font::builtin(),
            mods: Modifiers::default(),
            prev: Vec::new(),
            cur: Vec::new(),
            unrendered: false,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ConsoleConfig {
        &self.cfg
    }

    /// Takes console output from the guest.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.unrendered |= !bytes.is_empty();
        // Bounded pieces keep the scratch buffer small whatever the caller passes.
        for chunk in bytes.chunks(16 * 1024) {
            self.scratch.clear();
            self.filter.push(chunk, &mut self.scratch);
            self.parser.process(&self.scratch);
        }
        if self.scratch.capacity() > 64 * 1024 {
            self.scratch = Vec::new();
        }
    }

    /// True when output came in after the last [`Console::render`].
    pub fn unrendered(&self) -> bool {
        self.unrendered
    }

    /// Answers the terminal owes the guest (cursor reports, device attributes), to write to
    /// the console like typed input.
    pub fn take_replies(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.parser.callbacks_mut().replies)
    }

    /// The framebuffer size this console draws: `cols * 8` by `rows * 16`.
    pub fn size_px(&self) -> (u16, u16) {
        (self.cfg.cols * GLYPH_W, self.cfg.rows * GLYPH_H)
    }

    /// Changes the grid; the next render draws everything.
    pub fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        let cfg = ConsoleConfig {
            cols,
            rows,
            ..self.cfg.clone()
        };
        cfg.validate()?;
        self.parser.set_size(nz(rows), nz(cols));
        self.cfg = cfg;
        self.prev.clear();
        Ok(())
    }

    /// The grid as it should look now, into `self.cur`.
    fn resolve_grid(&mut self) {
        let screen = self.parser.screen();
        let (rows, cols) = (self.cfg.rows, self.cfg.cols);
        let cursor = if screen.hide_cursor() || screen.scrollback() > 0 {
            None
        } else {
            let (r, c) = screen.cursor_position();
            Some((r, c.min(cols - 1)))
        };
        self.cur.clear();
        self.cur.reserve(usize::from(rows) * usize::from(cols));
        for r in 0..rows {
            for c in 0..cols {
                let cell = screen.cell(r, c);
                self.cur
                    .push(render::resolve(self.font, cell, cursor == Some((r, c))));
            }
        }
    }

    /// Draws the cells that changed since the last render (all of them the first time, or
    /// when `fb` has the wrong size: it is resized) and returns the damaged rectangles.
    pub fn render(&mut self, fb: &mut Framebuffer) -> Result<Vec<Rect>> {
        let (w, h) = self.size_px();
        if fb.width() != w || fb.height() != h {
            fb.resize(w, h)?;
            self.prev.clear();
        }
        self.resolve_grid();
        let cols = usize::from(self.cfg.cols);
        let full = self.prev.len() != self.cur.len();
        let mut damage = Damage::default();
        let mut changed = Vec::with_capacity(cols);
        for (r, row) in self.cur.chunks_exact(cols).enumerate() {
            changed.clear();
            for (c, v) in row.iter().enumerate() {
                if full || self.prev[r * cols + c] != *v {
                    render::draw_cell(fb, self.font, c as u16, r as u16, v);
                    changed.push(c as u16);
                }
            }
            damage.row(r as u16, &changed);
        }
        std::mem::swap(&mut self.prev, &mut self.cur);
        self.unrendered = false;
        Ok(damage.finish())
    }

    /// Redraws everything (after a view switch, or when `fb` was drawn over).
    pub fn full_redraw(&mut self, fb: &mut Framebuffer) -> Result<()> {
        self.prev.clear();
        self.render(fb).map(|_| ())
    }

    /// A key event; returns the bytes for the guest (often none). Shift-PageUp/PageDown
    /// move through the scrollback; any other key press returns to the live screen.
    pub fn key(&mut self, keysym: u32, down: bool) -> Vec<u8> {
        if self.mods.update(keysym, down) || !down {
            return Vec::new();
        }
        let screen = self.parser.screen();
        let app_cursor = screen.application_cursor();
        let page = usize::from(self.cfg.rows / 2).max(1);
        match keys::press(keysym, self.mods, app_cursor, self.cfg.keys) {
            KeyAction::ScrollBack => {
                let at = screen.scrollback();
                self.parser
                    .screen_mut()
                    .set_scrollback(at.saturating_add(page));
                Vec::new()
            }
            KeyAction::ScrollForward => {
                let at = screen.scrollback();
                self.parser
                    .screen_mut()
                    .set_scrollback(at.saturating_sub(page));
                Vec::new()
            }
            KeyAction::Nothing => Vec::new(),
            KeyAction::Send(bytes) => {
                self.parser.screen_mut().set_scrollback(0);
                bytes
            }
        }
    }

    /// Forgets held modifiers (the view was switched away or the viewer left).
    pub fn release_modifiers(&mut self) {
        self.mods.clear();
    }

    /// How far back the view is scrolled, in lines (0 is the live screen).
    pub fn scroll_offset(&self) -> usize {
        self.parser.screen().scrollback()
    }

    /// Text pasted by a viewer, as the bytes a terminal would type: newlines become CR,
    /// other control characters are dropped, and the text is bracketed when the guest
    /// asked for bracketed paste (so pasted text cannot end the bracket early).
    pub fn paste(&mut self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 12);
        let bracketed = self.parser.screen().bracketed_paste();
        if bracketed {
            out.extend_from_slice(b"\x1b[200~");
        }
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    out.push(b'\r');
                }
                '\n' => out.push(b'\r'),
                '\t' => out.push(b'\t'),
                c if c.is_control() => {}
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if bracketed {
            out.extend_from_slice(b"\x1b[201~");
        }
        self.parser.screen_mut().set_scrollback(0);
        out
    }

    /// A paste from an RFB ClientCutText, whose text is Latin-1.
    pub fn paste_latin1(&mut self, bytes: &[u8]) -> Vec<u8> {
        let text: String = bytes.iter().map(|&b| char::from(b)).collect();
        self.paste(&text)
    }

    /// The title the guest set with OSC 0/2, if any.
    pub fn title(&self) -> Option<String> {
        self.parser.callbacks().title.clone()
    }

    /// The emulator's screen, for inspection.
    pub fn screen(&self) -> &vt100::Screen {
        self.parser.screen()
    }
}

#[cfg(test)]
mod tests;
