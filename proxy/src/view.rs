//! Views: what a domain can show. Each view owns a framebuffer and takes input.
//!
//! A view is a framebuffer behind a lock (its producer draws into it, viewers encode
//! from it) plus a [`ViewInput`] that takes keys and pointer events. The desktop view's
//! producer is the upstream connection; the console view's is the console task
//! ([`crate::console_view`]). Both draw into the framebuffer through a
//! [`crate::domain::ViewHandle`]. Key [`Binding`]s switch between views.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::rfb::Framebuffer;

/// What kind of view this is; its label appears in the desktop name viewers see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewKind {
    /// The guest's text console: always there, the first view and the fallback.
    Console,
    /// The guest's graphical desktop (reverse or forward; one at a time).
    Desktop,
    /// Another configured upstream VNC server, labelled with its configured name.
    Upstream,
}

impl ViewKind {
    /// The label used in desktop names (`vm1 — desktop`).
    pub fn label(self) -> &'static str {
        match self {
            ViewKind::Console => "console",
            ViewKind::Desktop => "desktop",
            ViewKind::Upstream => "upstream",
        }
    }
}

/// Binding modifier: either Control key.
pub const MOD_CTRL: u8 = 1;
/// Binding modifier: either Alt (or Meta) key.
pub const MOD_ALT: u8 = 2;
/// Binding modifier: either Shift key.
pub const MOD_SHIFT: u8 = 4;

/// Where a binding switches to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The console view.
    Console,
    /// The desktop view (when one is connected).
    Desktop,
    /// A configured upstream view by name.
    Named(String),
}

/// A key combination that switches views: exactly these modifiers held, then the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// `MOD_*` bits.
    pub mods: u8,
    /// The key's keysym (lower case for letters).
    pub keysym: u32,
    /// Where it goes.
    pub target: Target,
}

impl Binding {
    /// Parses `ctrl-alt-f1`, `ctrl-shift-x`, `alt-f12`: modifiers (`ctrl`, `alt`,
    /// `shift`) and one key (`f1`..`f12` or a letter or digit), joined by `-` or `+`.
    pub fn parse(spec: &str, target: Target) -> Result<Binding, String> {
        let mut mods = 0;
        let parts: Vec<String> = spec
            .split(['-', '+'])
            .map(|p| p.trim().to_ascii_lowercase())
            .collect();
        let (key, mod_names) = parts
            .split_last()
            .ok_or_else(|| format!("{spec:?}: empty key binding"))?;
        for m in mod_names {
            mods |= match m.as_str() {
                "ctrl" | "control" => MOD_CTRL,
                "alt" | "meta" => MOD_ALT,
                "shift" => MOD_SHIFT,
                o => return Err(format!("{spec:?}: unknown modifier {o:?}")),
            };
        }
        if mods & (MOD_CTRL | MOD_ALT) == 0 {
            return Err(format!(
                "{spec:?}: a binding needs ctrl or alt (it would swallow typing otherwise)"
            ));
        }
        let keysym = match key.as_bytes() {
            [c] if c.is_ascii_alphanumeric() => u32::from(*c),
            [b'f', rest @ ..] if !rest.is_empty() => match key[1..].parse::<u32>() {
                Ok(n @ 1..=12) => 0xffbe + n - 1,
                _ => return Err(format!("{spec:?}: function keys are f1 to f12")),
            },
            _ => return Err(format!("{spec:?}: unknown key {key:?}")),
        };
        Ok(Binding {
            mods,
            keysym,
            target,
        })
    }

    fn matches(&self, mods: u8, keysym: u32) -> bool {
        let k = match keysym {
            0x41..=0x5a => keysym + 0x20,
            k => k,
        };
        self.mods == mods && self.keysym == k
    }
}

/// How a domain's views switch: key bindings and the automatic switch's manners.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchPolicy {
    /// Bindings, first match wins.
    pub bindings: Vec<Binding>,
    /// After a switch by hand, a desktop that connects waits this long before it takes
    /// the screen (it does not take it at all if it connected within the hold).
    pub manual_hold: Duration,
}

impl Default for SwitchPolicy {
    fn default() -> Self {
        SwitchPolicy {
            bindings: vec![
                Binding {
                    mods: MOD_CTRL | MOD_ALT,
                    keysym: 0xffbe,
                    target: Target::Console,
                },
                Binding {
                    mods: MOD_CTRL | MOD_ALT,
                    keysym: 0xffc4,
                    target: Target::Desktop,
                },
            ],
            manual_hold: Duration::from_secs(5),
        }
    }
}

impl SwitchPolicy {
    /// The binding for `keysym` pressed with `mods` held, if any.
    pub fn binding(&self, mods: u8, keysym: u32) -> Option<&Binding> {
        self.bindings.iter().find(|b| b.matches(mods, keysym))
    }
}

/// Viewer input for the console, in order, for the console task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// A key pressed or released.
    Key {
        /// Pressed.
        down: bool,
        /// The X keysym.
        keysym: u32,
    },
    /// Clipboard text to paste (Latin-1).
    Paste(Vec<u8>),
}

/// The console view's input: queued for the console task, dropped (and counted) when the
/// queue is full.
#[derive(Debug)]
pub struct ConsoleInput {
    tx: mpsc::Sender<ConsoleEvent>,
    dropped: AtomicU64,
}

impl ConsoleInput {
    /// Input that goes to `tx`.
    pub fn new(tx: mpsc::Sender<ConsoleEvent>) -> Self {
        ConsoleInput {
            tx,
            dropped: AtomicU64::new(0),
        }
    }

    /// Events dropped because the console task was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, e: ConsoleEvent) {
        if self.tx.try_send(e).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl ViewInput for ConsoleInput {
    fn key(&self, down: bool, keysym: u32) {
        self.send(ConsoleEvent::Key { down, keysym });
    }
    fn pointer(&self, _: u8, _: u16, _: u16) {}
    fn cut_text(&self, text: &[u8]) {
        self.send(ConsoleEvent::Paste(text.to_vec()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_parse_and_match() {
        let b = Binding::parse("Ctrl-Alt-F2", Target::Named("x".into())).unwrap();
        assert_eq!((b.mods, b.keysym), (MOD_CTRL | MOD_ALT, 0xffbf));
        assert!(b.matches(MOD_CTRL | MOD_ALT, 0xffbf));
        assert!(!b.matches(MOD_CTRL | MOD_ALT | MOD_SHIFT, 0xffbf));
        assert!(!b.matches(MOD_CTRL, 0xffbf));
        let c = Binding::parse("ctrl+shift+c", Target::Console).unwrap();
        assert!(
            c.matches(MOD_CTRL | MOD_SHIFT, u32::from(b'C')),
            "either case"
        );
        for bad in [
            "",
            "f1",
            "shift-f1",
            "ctrl-alt-f13",
            "ctrl-alt-f0",
            "hyper-f1",
            "ctrl-alt-?",
        ] {
            assert!(Binding::parse(bad, Target::Console).is_err(), "{bad:?}");
        }
        let p = SwitchPolicy::default();
        assert_eq!(
            p.binding(MOD_CTRL | MOD_ALT, 0xffbe).unwrap().target,
            Target::Console
        );
        assert_eq!(
            p.binding(MOD_CTRL | MOD_ALT, 0xffc4).unwrap().target,
            Target::Desktop
        );
    }
}
