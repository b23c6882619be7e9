//! A byte filter in front of the emulator.
//!
//! `vt100` does not implement character set designation, so DEC special graphics (the line
//! drawing set that `ESC ( 0` and `SO` select, used by curses programs) would show as
//! letters. It also buffers an unterminated OSC string without limit, and the Linux console's
//! palette sequences (`ESC ] P nrrggbb`, `ESC ] R`) carry no terminator at all and would
//! swallow the output after them. This filter follows just enough of the escape grammar to
//! know when a byte is printable text, translates line-drawing bytes to Unicode, caps OSC
//! strings and strips the Linux palette sequences. Its state is a few bytes, whatever the
//! input.

/// The longest OSC string passed on; the rest is dropped (a title is all we use).
pub const MAX_OSC: usize = 4096;

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;
const CAN: u8 = 0x18;
const SUB: u8 = 0x1a;
const SO: u8 = 0x0e;
const SI: u8 = 0x0f;

/// A 94-character set a G register can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Charset {
    #[default]
    Ascii,
    /// DEC special graphics (`ESC ( 0`).
    Graphics,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum State {
    #[default]
    Ground,
    Esc,
    /// After `ESC` and an intermediate byte; `Some(g)` when it designates G register `g`.
    EscInt(Option<u8>),
    Csi,
    /// Inside an OSC string: bytes seen so far.
    Osc(usize),
    /// DCS, SOS, PM or APC: passed on until ST, CAN or SUB.
    Str,
    /// Swallowing the hex digits of a Linux `ESC ] P` palette entry.
    LinuxPalette(u8),
}

#[derive(Clone, Copy, Debug, Default)]
struct Charsets {
    g: [Charset; 2],
    shifted: bool,
}

impl Charsets {
    fn active(&self) -> Charset {
        self.g[usize::from(self.shifted)]
    }
}

/// The filter; feed it every byte of console output in order.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    state: State,
    sets: Charsets,
    saved: Charsets,
}

/// The Unicode character DEC special graphics shows for `b` (0x5f..=0x7e).
pub fn dec_graphics(b: u8) -> Option<char> {
    const TABLE: [char; 32] = [
        '\u{a0}', '◆', '▒', '␉', '␌', '␍', '␊', '°', '±', '␤', '␋', '┘', '┐', '┌', '└', '┼', '⎺',
        '⎻', '─', '⎼', '⎽', '├', '┤', '┴', '┬', '│', '≤', '≥', 'π', '≠', '£', '·',
    ];
    b.checked_sub(0x5f)
        .and_then(|i| TABLE.get(usize::from(i)).copied())
}

impl Filter {
    /// A filter in the power-on state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the filtered form of `input` to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        for &b in input {
            self.byte(b, out);
        }
    }

    /// Controls that act in every state but strings.
    fn control(&mut self, b: u8) {
        match b {
            SO => self.sets.shifted = true,
            SI => self.sets.shifted = false,
            _ => {}
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => match b {
                ESC => self.state = State::Esc,
                0x5f..=0x7e if self.sets.active() == Charset::Graphics => {
                    if let Some(c) = dec_graphics(b) {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        return;
                    }
                }
                0..=0x1f => self.control(b),
                _ => {}
            },
            State::Esc => match b {
                b'[' => self.state = State::Csi,
                b']' => self.state = State::Osc(0),
                b'P' | b'X' | b'^' | b'_' => self.state = State::Str,
                b'(' => self.state = State::EscInt(Some(0)),
                b')' => self.state = State::EscInt(Some(1)),
                0x20..=0x2f => self.state = State::EscInt(None),
                ESC => {}
                CAN | SUB => self.state = State::Ground,
                0..=0x1f => self.control(b),
                b'7' => {
                    self.saved = self.sets;
                    self.state = State::Ground;
                }
                b'8' => {
                    self.sets = self.saved;
                    self.state = State::Ground;
                }
                b'c' => {
                    self.sets = Charsets::default();
                    self.saved = Charsets::default();
                    self.state = State::Ground;
                }
                _ => self.state = State::Ground,
            },
            State::EscInt(g) => match b {
                0x30..=0x7e => {
                    if let Some(g) = g {
                        self.sets.g[usize::from(g)] = if b == b'0' {
                            Charset::Graphics
                        } else {
                            Charset::Ascii
                        };
                    }
                    self.state = State::Ground;
                }
                ESC => self.state = State::Esc,
                CAN | SUB => self.state = State::Ground,
                0..=0x1f => self.control(b),
                _ => {}
            },
            State::Csi => match b {
                0x40..=0x7e => self.state = State::Ground,
                ESC => self.state = State::Esc,
                CAN | SUB => self.state = State::Ground,
                0..=0x1f => self.control(b),
                _ => {}
            },
            State::Osc(n) => match b {
                BEL | CAN | SUB => self.state = State::Ground,
                ESC => self.state = State::Esc,
                b'P' if n == 0 => {
                    // End the emulator's OSC at once; the digits never reach it.
                    out.push(BEL);
                    self.state = State::LinuxPalette(7);
                    return;
                }
                b'R' if n == 0 => {
                    out.push(BEL);
                    self.state = State::Ground;
                    return;
                }
                _ => {
                    if n >= MAX_OSC {
                        return;
                    }
                    self.state = State::Osc(n + 1);
                }
            },
            State::Str => match b {
                ESC => self.state = State::Esc,
                CAN | SUB => self.state = State::Ground,
                _ => {}
            },
            State::LinuxPalette(left) => {
                if b.is_ascii_hexdigit() {
                    self.state = if left <= 1 {
                        State::Ground
                    } else {
                        State::LinuxPalette(left - 1)
                    };
                    return;
                }
                // A malformed entry ends here; the byte is handled as ground text.
                self.state = State::Ground;
                return self.byte(b, out);
            }
        }
        out.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: &mut Filter, s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        f.push(s, &mut out);
        out
    }

    #[test]
    fn line_drawing_via_designation_and_shift() {
        let mut f = Filter::new();
        assert_eq!(
            run(&mut f, b"\x1b(0lqk\x1b(Bq"),
            "\x1b(0┌─┐\x1b(Bq".as_bytes()
        );
        let mut f = Filter::new();
        assert_eq!(
            run(&mut f, b"\x1b)0x\x0ex\x0fx"),
            "\x1b)0x\x0e│\x0fx".as_bytes()
        );
    }

    #[test]
    fn escape_finals_are_not_translated() {
        let mut f = Filter::new();
        // `m`, `l` and `q` end CSI sequences and must pass unchanged in graphics mode.
        let out = run(&mut f, b"\x1b(0\x1b[1mq\x1b[?25lq\x1b]0;lq\x07q");
        assert_eq!(out, "\x1b(0\x1b[1m─\x1b[?25l─\x1b]0;lq\x07─".as_bytes());
    }

    #[test]
    fn state_survives_chunk_boundaries() {
        let mut f = Filter::new();
        let mut out = Vec::new();
        for b in b"\x1b(0\x1b[1mq" {
            f.push(&[*b], &mut out);
        }
        assert_eq!(out, "\x1b(0\x1b[1m─".as_bytes());
    }

    #[test]
    fn save_restore_and_reset() {
        let mut f = Filter::new();
        let out = run(&mut f, b"\x1b(0\x1b7\x1b(Bq\x1b8q\x1bcq");
        assert_eq!(out, "\x1b(0\x1b7\x1b(Bq\x1b8─\x1bcq".as_bytes());
    }

    #[test]
    fn osc_is_capped() {
        let mut f = Filter::new();
        let mut input = b"\x1b]2;".to_vec();
        input.extend(std::iter::repeat_n(b'a', 100_000));
        input.extend_from_slice(b"\x07x");
        let out = run(&mut f, &input);
        assert!(out.len() <= MAX_OSC + 8, "{}", out.len());
        assert!(out.ends_with(b"\x07x"));
    }

    #[test]
    fn linux_palette_is_stripped() {
        let mut f = Filter::new();
        assert_eq!(
            run(&mut f, b"\x1b]P0102030hi\x1b]Rok"),
            b"\x1b]\x07hi\x1b]\x07ok"
        );
        let mut f = Filter::new();
        assert_eq!(run(&mut f, b"\x1b]P01zq"), b"\x1b]\x07zq");
    }

    #[test]
    fn utf8_passes_through() {
        let mut f = Filter::new();
        let s = "héllo ─ 世界".as_bytes();
        assert_eq!(run(&mut f, s), s);
    }
}
