//! X keysyms to the bytes a terminal sends.
//!
//! RFB key events carry keysyms and the viewer has already applied Shift and layout, so a
//! printable keysym is sent as its character; what we add is the terminal's encoding of
//! Control, Alt and the function keys, which depends on modifier state tracked from the
//! down/up events.

/// Which terminal's keyboard the guest expects for keys that differ between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KeyFlavour {
    /// xterm: Home/End as `CSI H`/`CSI F` (`SS3` in application mode), F1-F4 as `SS3 P`..`S`.
    #[default]
    Xterm,
    /// The Linux console: Home/End as `CSI 1~`/`CSI 4~`, F1-F5 as `CSI [A`..`E`.
    Linux,
}

/// What a key event asks of the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Bytes for the guest.
    Send(Vec<u8>),
    /// Shift-PageUp: show older lines.
    ScrollBack,
    /// Shift-PageDown: show newer lines.
    ScrollForward,
    /// A modifier changed or the key means nothing to a terminal.
    Nothing,
}

/// Keysym values used here (from X11's keysymdef.h).
pub mod sym {
    #![allow(missing_docs)]
    pub const BACKSPACE: u32 = 0xff08;
    pub const TAB: u32 = 0xff09;
    pub const LINEFEED: u32 = 0xff0a;
    pub const RETURN: u32 = 0xff0d;
    pub const ESCAPE: u32 = 0xff1b;
    pub const DELETE: u32 = 0xffff;
    pub const HOME: u32 = 0xff50;
    pub const LEFT: u32 = 0xff51;
    pub const UP: u32 = 0xff52;
    pub const RIGHT: u32 = 0xff53;
    pub const DOWN: u32 = 0xff54;
    pub const PAGE_UP: u32 = 0xff55;
    pub const PAGE_DOWN: u32 = 0xff56;
    pub const END: u32 = 0xff57;
    pub const BEGIN: u32 = 0xff58;
    pub const INSERT: u32 = 0xff63;
    pub const KP_SPACE: u32 = 0xff80;
    pub const KP_TAB: u32 = 0xff89;
    pub const KP_ENTER: u32 = 0xff8d;
    pub const KP_HOME: u32 = 0xff95;
    pub const KP_LEFT: u32 = 0xff96;
    pub const KP_UP: u32 = 0xff97;
    pub const KP_RIGHT: u32 = 0xff98;
    pub const KP_DOWN: u32 = 0xff99;
    pub const KP_PAGE_UP: u32 = 0xff9a;
    pub const KP_PAGE_DOWN: u32 = 0xff9b;
    pub const KP_END: u32 = 0xff9c;
    pub const KP_BEGIN: u32 = 0xff9d;
    pub const KP_INSERT: u32 = 0xff9e;
    pub const KP_DELETE: u32 = 0xff9f;
    pub const KP_MULTIPLY: u32 = 0xffaa;
    pub const KP_DIVIDE: u32 = 0xffaf;
    pub const KP_EQUAL: u32 = 0xffbd;
    pub const KP_0: u32 = 0xffb0;
    pub const KP_9: u32 = 0xffb9;
    pub const F1: u32 = 0xffbe;
    pub const F12: u32 = 0xffc9;
    pub const SHIFT_L: u32 = 0xffe1;
    pub const SHIFT_R: u32 = 0xffe2;
    pub const CONTROL_L: u32 = 0xffe3;
    pub const CONTROL_R: u32 = 0xffe4;
    pub const META_L: u32 = 0xffe7;
    pub const META_R: u32 = 0xffe8;
    pub const ALT_L: u32 = 0xffe9;
    pub const ALT_R: u32 = 0xffea;
    pub const ISO_LEFT_TAB: u32 = 0xfe20;
    /// Unicode keysyms are this plus the code point.
    pub const UNICODE: u32 = 0x0100_0000;
}

/// Held modifiers, one bit per physical key so releasing one side keeps the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Modifiers(u8);

impl Modifiers {
    fn bit(keysym: u32) -> Option<u8> {
        Some(match keysym {
            sym::SHIFT_L => 1,
            sym::SHIFT_R => 2,
            sym::CONTROL_L => 4,
            sym::CONTROL_R => 8,
            sym::ALT_L | sym::META_L => 16,
            sym::ALT_R | sym::META_R => 32,
            _ => return None,
        })
    }

    /// Updates state; true when `keysym` was a modifier.
    pub fn update(&mut self, keysym: u32, down: bool) -> bool {
        match Self::bit(keysym) {
            Some(b) if down => self.0 |= b,
            Some(b) => self.0 &= !b,
            None => return false,
        }
        true
    }

    /// Either Shift held.
    pub fn shift(self) -> bool {
        self.0 & 3 != 0
    }

    /// Either Control held.
    pub fn ctrl(self) -> bool {
        self.0 & 12 != 0
    }

    /// Either Alt or Meta held.
    pub fn alt(self) -> bool {
        self.0 & 48 != 0
    }

    /// Forgets every held key (the viewer left or the view changed).
    pub fn clear(&mut self) {
        self.0 = 0;
    }

    /// The xterm modifier parameter: 1 + Shift + 2 Alt + 4 Control.
    fn param(self) -> u8 {
        1 + u8::from(self.shift()) + 2 * u8::from(self.alt()) + 4 * u8::from(self.ctrl())
    }
}

/// The character a printable keysym stands for.
pub fn keysym_char(keysym: u32) -> Option<char> {
    match keysym {
        0x20..=0x7e | 0xa0..=0xff => char::from_u32(keysym),
        k if (sym::UNICODE + 0x20..=sym::UNICODE + 0x10_ffff).contains(&k) => {
            char::from_u32(k - sym::UNICODE).filter(|c| !c.is_control())
        }
        sym::KP_SPACE => Some(' '),
        sym::KP_MULTIPLY..=sym::KP_DIVIDE => {
            char::from_u32(keysym - sym::KP_MULTIPLY + u32::from(b'*'))
        }
        sym::KP_0..=sym::KP_9 => char::from_u32(keysym - sym::KP_0 + u32::from(b'0')),
        sym::KP_EQUAL => Some('='),
        _ => None,
    }
}

/// Control plus a character, as xterm encodes it.
fn ctrl_byte(c: char) -> Option<u8> {
    Some(match c {
        'a'..='z' => c as u8 - b'a' + 1,
        'A'..='Z' => c as u8 - b'A' + 1,
        ' ' | '@' | '2' => 0,
        '[' | '3' => 0x1b,
        '\\' | '4' => 0x1c,
        ']' | '5' => 0x1d,
        '^' | '~' | '6' => 0x1e,
        '_' | '/' | '7' => 0x1f,
        '?' | '8' => 0x7f,
        _ => return None,
    })
}

fn csi(out: &mut Vec<u8>, body: &str) {
    out.extend_from_slice(b"\x1b[");
    out.extend_from_slice(body.as_bytes());
}

/// The bytes for a key press, or what else it means.
pub fn press(keysym: u32, mods: Modifiers, app_cursor: bool, flavour: KeyFlavour) -> KeyAction {
    let m = mods.param();
    let mut out = Vec::new();
    // Cursor-type keys: a final letter.
    let cursor = match keysym {
        sym::UP | sym::KP_UP => Some('A'),
        sym::DOWN | sym::KP_DOWN => Some('B'),
        sym::RIGHT | sym::KP_RIGHT => Some('C'),
        sym::LEFT | sym::KP_LEFT => Some('D'),
        sym::HOME | sym::KP_HOME => Some('H'),
        sym::END | sym::KP_END => Some('F'),
        sym::BEGIN | sym::KP_BEGIN => Some('E'),
        _ => None,
    };
    if let Some(f) = cursor {
        if m > 1 {
            csi(&mut out, &format!("1;{m}{f}"));
        } else if flavour == KeyFlavour::Linux && matches!(f, 'H' | 'F') {
            csi(&mut out, if f == 'H' { "1~" } else { "4~" });
        } else if app_cursor {
            out.extend_from_slice(format!("\x1bO{f}").as_bytes());
        } else {
            csi(&mut out, &f.to_string());
        }
        return KeyAction::Send(out);
    }
    // Editing keys: a number and `~`.
    let tilde = match keysym {
        sym::INSERT | sym::KP_INSERT => Some(2),
        sym::DELETE | sym::KP_DELETE => Some(3),
        sym::PAGE_UP | sym::KP_PAGE_UP => Some(5),
        sym::PAGE_DOWN | sym::KP_PAGE_DOWN => Some(6),
        sym::F1..=sym::F12 => {
            const NUM: [u8; 12] = [11, 12, 13, 14, 15, 17, 18, 19, 20, 21, 23, 24];
            Some(NUM[(keysym - sym::F1) as usize])
        }
        _ => None,
    };
    if let Some(n) = tilde {
        if mods.shift() && !mods.ctrl() && !mods.alt() {
            match keysym {
                sym::PAGE_UP | sym::KP_PAGE_UP => return KeyAction::ScrollBack,
                sym::PAGE_DOWN | sym::KP_PAGE_DOWN => return KeyAction::ScrollForward,
                _ => {}
            }
        }
        let f14 = (11..=14).contains(&n);
        if f14 && flavour == KeyFlavour::Linux && m == 1 {
            csi(&mut out, &format!("[{}", char::from(b'A' + (n - 11))));
        } else if n == 15 && flavour == KeyFlavour::Linux && m == 1 {
            csi(&mut out, "[E");
        } else if f14 {
            let f = char::from(b'P' + (n - 11));
            if m > 1 {
                csi(&mut out, &format!("1;{m}{f}"));
            } else {
                out.extend_from_slice(format!("\x1bO{f}").as_bytes());
            }
        } else if m > 1 {
            csi(&mut out, &format!("{n};{m}~"));
        } else {
            csi(&mut out, &format!("{n}~"));
        }
        return KeyAction::Send(out);
    }
    if keysym == sym::ISO_LEFT_TAB || (keysym == sym::TAB && mods.shift()) {
        csi(&mut out, "Z");
        return KeyAction::Send(out);
    }
    let base: Vec<u8> = match keysym {
        sym::RETURN | sym::KP_ENTER => vec![b'\r'],
        sym::LINEFEED => vec![b'\n'],
        sym::BACKSPACE if mods.ctrl() => vec![0x08],
        sym::BACKSPACE => vec![0x7f],
        sym::TAB | sym::KP_TAB => vec![b'\t'],
        sym::ESCAPE => vec![0x1b],
        k => match keysym_char(k) {
            Some(c) => match ctrl_byte(c).filter(|_| mods.ctrl()) {
                Some(b) => vec![b],
                None => {
                    let mut buf = [0u8; 4];
                    c.encode_utf8(&mut buf).as_bytes().to_vec()
                }
            },
            None => return KeyAction::Nothing,
        },
    };
    if mods.alt() {
        out.push(0x1b);
    }
    out.extend_from_slice(&base);
    KeyAction::Send(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(keys: &[u32]) -> Modifiers {
        let mut m = Modifiers::default();
        for &k in keys {
            assert!(m.update(k, true));
        }
        m
    }

    fn send(keysym: u32, mods: &[u32], app: bool) -> Vec<u8> {
        match press(keysym, held(mods), app, KeyFlavour::Xterm) {
            KeyAction::Send(b) => b,
            other => panic!("{keysym:#x}: {other:?}"),
        }
    }

    #[test]
    fn table() {
        use sym::*;
        let cases: &[(u32, &[u32], bool, &[u8])] = &[
            (b'a' as u32, &[], false, b"a"),
            (b'A' as u32, &[SHIFT_L], false, b"A"),
            (0xe9, &[], false, "é".as_bytes()),
            (UNICODE + 0x20ac, &[], false, "€".as_bytes()),
            (UNICODE + 0x4e16, &[], false, "世".as_bytes()),
            (RETURN, &[], false, b"\r"),
            (KP_ENTER, &[], false, b"\r"),
            (BACKSPACE, &[], false, b"\x7f"),
            (BACKSPACE, &[CONTROL_L], false, b"\x08"),
            (TAB, &[], false, b"\t"),
            (TAB, &[SHIFT_R], false, b"\x1b[Z"),
            (ISO_LEFT_TAB, &[SHIFT_L], false, b"\x1b[Z"),
            (ESCAPE, &[], false, b"\x1b"),
            (UP, &[], false, b"\x1b[A"),
            (UP, &[], true, b"\x1bOA"),
            (DOWN, &[], true, b"\x1bOB"),
            (RIGHT, &[], false, b"\x1b[C"),
            (LEFT, &[], false, b"\x1b[D"),
            (LEFT, &[CONTROL_L], true, b"\x1b[1;5D"),
            (RIGHT, &[SHIFT_L, ALT_L], false, b"\x1b[1;4C"),
            (HOME, &[], false, b"\x1b[H"),
            (END, &[], true, b"\x1bOF"),
            (INSERT, &[], false, b"\x1b[2~"),
            (DELETE, &[], false, b"\x1b[3~"),
            (DELETE, &[CONTROL_R], false, b"\x1b[3;5~"),
            (PAGE_UP, &[], false, b"\x1b[5~"),
            (PAGE_DOWN, &[], false, b"\x1b[6~"),
            (PAGE_UP, &[CONTROL_L], false, b"\x1b[5;5~"),
            (F1, &[], false, b"\x1bOP"),
            (F1 + 3, &[], false, b"\x1bOS"),
            (F1 + 1, &[SHIFT_L], false, b"\x1b[1;2Q"),
            (F1 + 4, &[], false, b"\x1b[15~"),
            (F1 + 5, &[], false, b"\x1b[17~"),
            (F1 + 9, &[], false, b"\x1b[21~"),
            (F1 + 10, &[], false, b"\x1b[23~"),
            (F12, &[], false, b"\x1b[24~"),
            (F12, &[CONTROL_L], false, b"\x1b[24;5~"),
            (b'c' as u32, &[CONTROL_L], false, b"\x03"),
            (b'C' as u32, &[CONTROL_R, SHIFT_L], false, b"\x03"),
            (b'a' as u32, &[CONTROL_L], false, b"\x01"),
            (b'z' as u32, &[CONTROL_L], false, b"\x1a"),
            (b' ' as u32, &[CONTROL_L], false, b"\x00"),
            (b'@' as u32, &[CONTROL_L], false, b"\x00"),
            (b'[' as u32, &[CONTROL_L], false, b"\x1b"),
            (b'\\' as u32, &[CONTROL_L], false, b"\x1c"),
            (b']' as u32, &[CONTROL_L], false, b"\x1d"),
            (b'^' as u32, &[CONTROL_L], false, b"\x1e"),
            (b'_' as u32, &[CONTROL_L], false, b"\x1f"),
            (b'x' as u32, &[ALT_L], false, b"\x1bx"),
            (b'x' as u32, &[META_R], false, b"\x1bx"),
            (b'x' as u32, &[ALT_L, CONTROL_L], false, b"\x1b\x18"),
            (RETURN, &[ALT_R], false, b"\x1b\r"),
            (KP_0 + 7, &[], false, b"7"),
            (KP_MULTIPLY + 1, &[], false, b"+"),
        ];
        for (k, mods, app, want) in cases {
            assert_eq!(send(*k, mods, *app), *want, "keysym {k:#x} mods {mods:x?}");
        }
    }

    #[test]
    fn linux_flavour() {
        let p = |k| press(k, Modifiers::default(), false, KeyFlavour::Linux);
        assert_eq!(p(sym::HOME), KeyAction::Send(b"\x1b[1~".to_vec()));
        assert_eq!(p(sym::END), KeyAction::Send(b"\x1b[4~".to_vec()));
        assert_eq!(p(sym::F1), KeyAction::Send(b"\x1b[[A".to_vec()));
        assert_eq!(p(sym::F1 + 4), KeyAction::Send(b"\x1b[[E".to_vec()));
        assert_eq!(p(sym::F1 + 5), KeyAction::Send(b"\x1b[17~".to_vec()));
    }

    #[test]
    fn scroll_keys_and_nothing() {
        let shift = held(&[sym::SHIFT_R]);
        assert_eq!(
            press(sym::PAGE_UP, shift, false, KeyFlavour::Xterm),
            KeyAction::ScrollBack
        );
        assert_eq!(
            press(sym::PAGE_DOWN, shift, false, KeyFlavour::Xterm),
            KeyAction::ScrollForward
        );
        let none = Modifiers::default();
        assert_eq!(
            press(0xffe5, none, false, KeyFlavour::Xterm),
            KeyAction::Nothing
        );
        assert_eq!(
            press(sym::UNICODE + 0x07, none, false, KeyFlavour::Xterm),
            KeyAction::Nothing
        );
        assert_eq!(
            press(0x1234_5678, none, false, KeyFlavour::Xterm),
            KeyAction::Nothing
        );
    }

    #[test]
    fn modifier_sides_are_independent() {
        let mut m = Modifiers::default();
        m.update(sym::CONTROL_L, true);
        m.update(sym::CONTROL_R, true);
        m.update(sym::CONTROL_L, false);
        assert!(m.ctrl());
        m.update(sym::CONTROL_R, false);
        assert!(!m.ctrl());
        assert!(!m.update(b'a' as u32, true));
    }
}
