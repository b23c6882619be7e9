//! Client-to-server messages: parsed by our server side, written by our client side.

use super::error::{Error, Result};
use super::fb::Rect;
use super::pixel::PixelFormat;
use super::wire::{finish, put_i32, put_u16, put_u32, PResult, Rd};

/// Bounds on what a client may make us buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Largest ClientCutText we accept, in bytes.
    pub max_cut_text: u32,
    /// Most encodings in one SetEncodings.
    pub max_encodings: u16,
    /// Most screens in one SetDesktopSize.
    pub max_screens: u8,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_cut_text: 1 << 20,
            max_encodings: 512,
            max_screens: 16,
        }
    }
}

/// One screen of an ExtendedDesktopSize layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Screen {
    /// Screen identifier.
    pub id: u32,
    /// Position and size within the framebuffer.
    pub rect: Rect,
    /// Flags, unused by the protocol so far.
    pub flags: u32,
}

impl Screen {
    pub(crate) fn parse(r: &mut Rd<'_>) -> PResult<Self> {
        Ok(Screen {
            id: r.u32()?,
            rect: Rect::new(r.u16()?, r.u16()?, r.u16()?, r.u16()?),
            flags: r.u32()?,
        })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        put_u32(out, self.id);
        put_u16(out, self.rect.x);
        put_u16(out, self.rect.y);
        put_u16(out, self.rect.w);
        put_u16(out, self.rect.h);
        put_u32(out, self.flags);
    }
}

/// The longest Fence payload the protocol allows.
pub const MAX_FENCE_PAYLOAD: usize = 64;

/// A message from a viewer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Type 0.
    SetPixelFormat(PixelFormat),
    /// Type 2.
    SetEncodings(Vec<i32>),
    /// Type 3.
    FramebufferUpdateRequest {
        /// Only changes are wanted.
        incremental: bool,
        /// The area wanted.
        rect: Rect,
    },
    /// Type 4.
    KeyEvent {
        /// Pressed (true) or released.
        down: bool,
        /// X keysym.
        key: u32,
    },
    /// Type 5.
    PointerEvent {
        /// Button mask.
        buttons: u8,
        /// Column.
        x: u16,
        /// Row.
        y: u16,
    },
    /// Type 6.
    ClientCutText(Vec<u8>),
    /// Type 150.
    EnableContinuousUpdates {
        /// On or off.
        enable: bool,
        /// The area to keep updated.
        rect: Rect,
    },
    /// Type 248.
    Fence {
        /// Flag bits.
        flags: u32,
        /// Up to 64 opaque bytes.
        payload: Vec<u8>,
    },
    /// Type 251.
    SetDesktopSize {
        /// Requested width.
        width: u16,
        /// Requested height.
        height: u16,
        /// Requested layout.
        screens: Vec<Screen>,
    },
    /// Type 255, subtype 0.
    QemuKeyEvent {
        /// Pressed (true) or released.
        down: bool,
        /// X keysym.
        keysym: u32,
        /// XT scancode.
        keycode: u32,
    },
}

fn rect(r: &mut Rd<'_>) -> PResult<Rect> {
    Ok(Rect::new(r.u16()?, r.u16()?, r.u16()?, r.u16()?))
}

fn put_rect(out: &mut Vec<u8>, r: &Rect) {
    put_u16(out, r.x);
    put_u16(out, r.y);
    put_u16(out, r.w);
    put_u16(out, r.h);
}

fn parse(r: &mut Rd<'_>, lim: &ClientLimits) -> PResult<ClientMessage> {
    let t = r.u8()?;
    Ok(match t {
        0 => {
            r.skip(3)?;
            let b: &[u8; 16] = r.bytes(16)?.try_into().expect("16 bytes");
            ClientMessage::SetPixelFormat(PixelFormat::from_wire(b)?)
        }
        2 => {
            r.skip(1)?;
            let n = r.u16()?;
            if n > lim.max_encodings {
                return Err(Error::TooLarge {
                    what: "SetEncodings count",
                    len: n.into(),
                    limit: lim.max_encodings.into(),
                }
                .into());
            }
            let body = r.bytes(usize::from(n) * 4)?;
            ClientMessage::SetEncodings(
                body.chunks_exact(4)
                    .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        3 => ClientMessage::FramebufferUpdateRequest {
            incremental: r.u8()? != 0,
            rect: rect(r)?,
        },
        4 => {
            let down = r.u8()? != 0;
            r.skip(2)?;
            ClientMessage::KeyEvent {
                down,
                key: r.u32()?,
            }
        }
        5 => ClientMessage::PointerEvent {
            buttons: r.u8()?,
            x: r.u16()?,
            y: r.u16()?,
        },
        6 => {
            r.skip(3)?;
            let len = r.u32()?;
            if len > lim.max_cut_text {
                return Err(Error::TooLarge {
                    what: "ClientCutText length",
                    len: len.into(),
                    limit: lim.max_cut_text.into(),
                }
                .into());
            }
            ClientMessage::ClientCutText(r.bytes(len as usize)?.to_vec())
        }
        150 => ClientMessage::EnableContinuousUpdates {
            enable: r.u8()? != 0,
            rect: rect(r)?,
        },
        248 => {
            r.skip(3)?;
            let flags = r.u32()?;
            let len = r.u8()?;
            if usize::from(len) > MAX_FENCE_PAYLOAD {
                return Err(Error::TooLarge {
                    what: "Fence payload",
                    len: len.into(),
                    limit: MAX_FENCE_PAYLOAD as u64,
                }
                .into());
            }
            ClientMessage::Fence {
                flags,
                payload: r.bytes(len.into())?.to_vec(),
            }
        }
        251 => {
            r.skip(1)?;
            let width = r.u16()?;
            let height = r.u16()?;
            let n = r.u8()?;
            r.skip(1)?;
            if n > lim.max_screens {
                return Err(Error::TooLarge {
                    what: "SetDesktopSize screens",
                    len: n.into(),
                    limit: lim.max_screens.into(),
                }
                .into());
            }
            let mut screens = Vec::with_capacity(n.into());
            for _ in 0..n {
                screens.push(Screen::parse(r)?);
            }
            ClientMessage::SetDesktopSize {
                width,
                height,
                screens,
            }
        }
        255 => {
            let sub = r.u8()?;
            if sub != 0 {
                return Err(Error::Malformed("QEMU client message subtype").into());
            }
            ClientMessage::QemuKeyEvent {
                down: r.u16()? != 0,
                keysym: r.u32()?,
                keycode: r.u32()?,
            }
        }
        t => return Err(Error::UnknownMessage(t).into()),
    })
}

/// Parses one message from the start of `buf`: `Ok(None)` means more bytes are needed,
/// `Ok(Some((msg, used)))` consumed `used` bytes.
pub fn parse_client_message(
    buf: &[u8],
    lim: &ClientLimits,
) -> Result<Option<(ClientMessage, usize)>> {
    let mut r = Rd::new(buf);
    finish(parse(&mut r, lim).map(|m| (m, r.pos())))
}

impl ClientMessage {
    /// Appends the wire form.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            ClientMessage::SetPixelFormat(pf) => {
                out.extend_from_slice(&[0, 0, 0, 0]);
                out.extend_from_slice(&pf.to_wire());
            }
            ClientMessage::SetEncodings(list) => {
                out.extend_from_slice(&[2, 0]);
                put_u16(out, list.len() as u16);
                for &e in list.iter().take(usize::from(u16::MAX)) {
                    put_i32(out, e);
                }
            }
            ClientMessage::FramebufferUpdateRequest { incremental, rect } => {
                out.extend_from_slice(&[3, u8::from(*incremental)]);
                put_rect(out, rect);
            }
            ClientMessage::KeyEvent { down, key } => {
                out.extend_from_slice(&[4, u8::from(*down), 0, 0]);
                put_u32(out, *key);
            }
            ClientMessage::PointerEvent { buttons, x, y } => {
                out.extend_from_slice(&[5, *buttons]);
                put_u16(out, *x);
                put_u16(out, *y);
            }
            ClientMessage::ClientCutText(t) => {
                out.extend_from_slice(&[6, 0, 0, 0]);
                put_u32(out, t.len() as u32);
                out.extend_from_slice(t);
            }
            ClientMessage::EnableContinuousUpdates { enable, rect } => {
                out.extend_from_slice(&[150, u8::from(*enable)]);
                put_rect(out, rect);
            }
            ClientMessage::Fence { flags, payload } => {
                out.extend_from_slice(&[248, 0, 0, 0]);
                put_u32(out, *flags);
                let p = &payload[..payload.len().min(MAX_FENCE_PAYLOAD)];
                out.push(p.len() as u8);
                out.extend_from_slice(p);
            }
            ClientMessage::SetDesktopSize {
                width,
                height,
                screens,
            } => {
                out.extend_from_slice(&[251, 0]);
                put_u16(out, *width);
                put_u16(out, *height);
                let s = &screens[..screens.len().min(255)];
                out.extend_from_slice(&[s.len() as u8, 0]);
                for sc in s {
                    sc.write(out);
                }
            }
            ClientMessage::QemuKeyEvent {
                down,
                keysym,
                keycode,
            } => {
                out.extend_from_slice(&[255, 0]);
                put_u16(out, u16::from(*down));
                put_u32(out, *keysym);
                put_u32(out, *keycode);
            }
        }
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<ClientMessage> {
        vec![
            ClientMessage::SetPixelFormat(PixelFormat::rgb565()),
            ClientMessage::SetEncodings(vec![16, 7, -223, -308]),
            ClientMessage::FramebufferUpdateRequest {
                incremental: true,
                rect: Rect::new(1, 2, 3, 4),
            },
            ClientMessage::KeyEvent {
                down: true,
                key: 0xffe3,
            },
            ClientMessage::PointerEvent {
                buttons: 5,
                x: 10,
                y: 20,
            },
            ClientMessage::ClientCutText(b"hello".to_vec()),
            ClientMessage::EnableContinuousUpdates {
                enable: true,
                rect: Rect::new(0, 0, 8, 8),
            },
            ClientMessage::Fence {
                flags: 0x8000_0003,
                payload: vec![1, 2, 3],
            },
            ClientMessage::SetDesktopSize {
                width: 800,
                height: 600,
                screens: vec![Screen {
                    id: 1,
                    rect: Rect::new(0, 0, 800, 600),
                    flags: 0,
                }],
            },
            ClientMessage::QemuKeyEvent {
                down: false,
                keysym: 0x61,
                keycode: 0x1e,
            },
        ]
    }

    #[test]
    fn round_trip_and_every_prefix_needs_more() {
        let lim = ClientLimits::default();
        for m in all() {
            let b = m.to_bytes();
            for cut in 0..b.len() {
                assert!(parse_client_message(&b[..cut], &lim).unwrap().is_none());
            }
            let mut extra = b.clone();
            extra.push(0xAA);
            let (got, used) = parse_client_message(&extra, &lim).unwrap().unwrap();
            assert_eq!(got, m);
            assert_eq!(used, b.len());
        }
    }

    #[test]
    fn huge_cut_text_fails_before_the_body_arrives() {
        let lim = ClientLimits::default();
        let hdr = [6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            parse_client_message(&hdr, &lim),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_messages_are_typed_errors() {
        let lim = ClientLimits::default();
        assert!(matches!(
            parse_client_message(&[7], &lim),
            Err(Error::UnknownMessage(7))
        ));
        assert!(matches!(
            parse_client_message(&[2, 0, 0xff, 0xff], &lim),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            parse_client_message(&[248, 0, 0, 0, 0, 0, 0, 0, 65], &lim),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            parse_client_message(&[251, 0, 0, 1, 0, 1, 200, 0], &lim),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            parse_client_message(&[255, 1], &lim),
            Err(Error::Malformed(_))
        ));
        let mut pf = PixelFormat::rgb888().to_wire();
        pf[4] = 0;
        pf[5] = 0; // red max 0
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&pf);
        assert!(matches!(
            parse_client_message(&m, &lim),
            Err(Error::PixelFormat(_))
        ));
    }
}
