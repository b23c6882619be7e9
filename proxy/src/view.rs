//! Views: what a domain can show. Each view owns a framebuffer and takes input.
//!
//! A view is a framebuffer behind a lock (its producer draws into it, viewers encode
//! from it) plus a [`ViewInput`] that takes keys and pointer events. The desktop view's
//! producer is the upstream connection; the placeholder draws once; the console view
//! (the terminal emulator) plugs in the same way: draw into the framebuffer through a
//! [`crate::domain::ViewHandle`], implement [`ViewInput`].

use std::sync::{Arc, RwLock};

use crate::font::{draw_text, text_width, GLYPH_H};
use crate::rfb::Framebuffer;

/// What kind of view this is; its label appears in the desktop name viewers see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewKind {
    /// Shown while the domain has nothing else.
    Placeholder,
    /// The guest's text console.
    Console,
    /// The guest's graphical desktop (an upstream RFB server).
    Desktop,
}

impl ViewKind {
    /// The label used in desktop names (`vm1 — desktop`).
    pub fn label(self) -> &'static str {
        match self {
            ViewKind::Placeholder => "no desktop",
            ViewKind::Console => "console",
            ViewKind::Desktop => "desktop",
        }
    }
}

/// Input a view accepts. Called with the domain's lock held: implementations must not
/// block (queue, or drop and count).
pub trait ViewInput: Send + Sync {
    /// A key pressed or released (an X keysym).
    fn key(&self, down: bool, keysym: u32);
    /// The pointer moved or a button changed; coordinates are inside the view.
    fn pointer(&self, buttons: u8, x: u16, y: u16);
    /// A viewer's clipboard text (Latin-1, as RFB defines it).
    fn cut_text(&self, text: &[u8]);
}

/// A view that ignores input.
#[derive(Debug, Default)]
pub struct NoInput;

impl ViewInput for NoInput {
    fn key(&self, _: bool, _: u32) {}
    fn pointer(&self, _: u8, _: u16, _: u16) {}
    fn cut_text(&self, _: &[u8]) {}
}

/// A cursor shape passed through from an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CursorShape {
    /// Hotspot column.
    pub hot_x: u16,
    /// Hotspot row.
    pub hot_y: u16,
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
    /// `0x00RRGGBB` pixels, row-major.
    pub pixels: Vec<u32>,
    /// One bit per pixel, rows padded to bytes, most significant bit first.
    pub mask: Vec<u8>,
}

/// A framebuffer shared between the view's producer and the viewers encoding from it.
pub type SharedFb = Arc<RwLock<Framebuffer>>;

/// Size of the placeholder screen.
pub const PLACEHOLDER_SIZE: (u16, u16) = (800, 600);
/// Placeholder background.
pub const PLACEHOLDER_BG: u32 = 0x202838;
/// Placeholder text colour.
pub const PLACEHOLDER_FG: u32 = 0xe0e0e0;

/// Draws the placeholder: the domain's name and a line saying it has no desktop yet.
pub fn placeholder(domain: &str) -> Framebuffer {
    let (w, h) = PLACEHOLDER_SIZE;
    let mut fb =
        Framebuffer::new(w, h).expect("the placeholder size is below the framebuffer limit");
    fb.pixels_mut().fill(PLACEHOLDER_BG);
    let lines = [
        domain.chars().take(40).collect::<String>(),
        "has no desktop yet".into(),
    ];
    let scale = 3;
    let line_h = (GLYPH_H + 4) * scale;
    let top = usize::from(h) / 2 - line_h;
    for (i, l) in lines.iter().enumerate() {
        let x = usize::from(w).saturating_sub(text_width(l, scale)) / 2;
        draw_text(&mut fb, x, top + i * line_h, scale, PLACEHOLDER_FG, l);
    }
    fb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_has_text_on_background() {
        let fb = placeholder("vm1");
        assert_eq!((fb.width(), fb.height()), PLACEHOLDER_SIZE);
        let fg = fb.pixels().iter().filter(|&&p| p == PLACEHOLDER_FG).count();
        let bg = fb.pixels().iter().filter(|&&p| p == PLACEHOLDER_BG).count();
        assert!(fg > 500, "some text is drawn");
        assert_eq!(fg + bg, fb.pixels().len(), "two colours only");
        assert_ne!(placeholder("vm2"), fb, "the domain name is drawn");
    }
}
