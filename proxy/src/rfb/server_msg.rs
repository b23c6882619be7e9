//! Server-to-client messages: written by our server side. Our client side parses them in
//! [`super::decode::ClientDecoder`], which needs decoder state for rectangles.

use super::client_msg::{Screen, MAX_FENCE_PAYLOAD};
use super::encoding;
use super::error::{Error, Result};
use super::fb::Rect;
use super::pixel::Packer;
use super::wire::{put_i32, put_u16, put_u32};

/// ExtendedDesktopSize reason (the rectangle's x): a change the server made.
pub const EDS_REASON_SERVER: u16 = 0;
/// ExtendedDesktopSize reason: a reply to this client's SetDesktopSize.
pub const EDS_REASON_THIS_CLIENT: u16 = 1;
/// ExtendedDesktopSize reason: another client's SetDesktopSize.
pub const EDS_REASON_OTHER_CLIENT: u16 = 2;
/// ExtendedDesktopSize status (the rectangle's y): no error.
pub const EDS_OK: u16 = 0;
/// Resize is administratively prohibited.
pub const EDS_PROHIBITED: u16 = 1;
/// Out of resources.
pub const EDS_OUT_OF_RESOURCES: u16 = 2;
/// Invalid screen layout.
pub const EDS_INVALID_LAYOUT: u16 = 3;

/// A message from the server that is not a framebuffer update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// Type 1.
    SetColourMapEntries {
        /// First index set.
        first: u16,
        /// 16-bit R, G, B per entry.
        colours: Vec<[u16; 3]>,
    },
    /// Type 2.
    Bell,
    /// Type 3.
    ServerCutText(Vec<u8>),
    /// Type 150.
    EndOfContinuousUpdates,
    /// Type 248.
    Fence {
        /// Flag bits.
        flags: u32,
        /// Up to 64 opaque bytes.
        payload: Vec<u8>,
    },
}

impl ServerMessage {
    /// Appends the wire form.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            ServerMessage::SetColourMapEntries { first, colours } => {
                out.extend_from_slice(&[1, 0]);
                put_u16(out, *first);
                let c = &colours[..colours.len().min(usize::from(u16::MAX))];
                put_u16(out, c.len() as u16);
                for rgb in c {
                    for v in rgb {
                        put_u16(out, *v);
                    }
                }
            }
            ServerMessage::Bell => out.push(2),
            ServerMessage::ServerCutText(t) => {
                out.extend_from_slice(&[3, 0, 0, 0]);
                put_u32(out, t.len() as u32);
                out.extend_from_slice(t);
            }
            ServerMessage::EndOfContinuousUpdates => out.push(150),
            ServerMessage::Fence { flags, payload } => {
                out.extend_from_slice(&[248, 0, 0, 0]);
                put_u32(out, *flags);
                let p = &payload[..payload.len().min(MAX_FENCE_PAYLOAD)];
                out.push(p.len() as u8);
                out.extend_from_slice(p);
            }
        }
    }
}

/// Builds one FramebufferUpdate whose rectangle count is filled in at the end, so
/// encoders may split a rectangle into several.
#[derive(Debug)]
pub struct UpdateWriter {
    start: usize,
    count: u32,
}

impl UpdateWriter {
    /// Writes the message header with a placeholder count.
    pub fn begin(out: &mut Vec<u8>) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0]);
        UpdateWriter { start, count: 0 }
    }

    /// Rectangles written so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Writes a rectangle header; the caller writes its body next.
    pub fn rect_header(&mut self, out: &mut Vec<u8>, r: &Rect, enc: i32) {
        self.count += 1;
        put_u16(out, r.x);
        put_u16(out, r.y);
        put_u16(out, r.w);
        put_u16(out, r.h);
        put_i32(out, enc);
    }

    /// A DesktopSize pseudo-rectangle.
    pub fn desktop_size(&mut self, out: &mut Vec<u8>, width: u16, height: u16) {
        self.rect_header(out, &Rect::new(0, 0, width, height), encoding::DESKTOP_SIZE);
    }

    /// An ExtendedDesktopSize pseudo-rectangle with a reason and status.
    pub fn extended_desktop_size(
        &mut self,
        out: &mut Vec<u8>,
        reason: u16,
        status: u16,
        width: u16,
        height: u16,
        screens: &[Screen],
    ) {
        let s = &screens[..screens.len().min(255)];
        self.rect_header(
            out,
            &Rect::new(reason, status, width, height),
            encoding::EXTENDED_DESKTOP_SIZE,
        );
        out.extend_from_slice(&[s.len() as u8, 0, 0, 0]);
        for sc in s {
            sc.write(out);
        }
    }

    /// A DesktopName pseudo-rectangle.
    pub fn desktop_name(&mut self, out: &mut Vec<u8>, name: &str) {
        self.rect_header(out, &Rect::default(), encoding::DESKTOP_NAME);
        put_u32(out, name.len() as u32);
        out.extend_from_slice(name.as_bytes());
    }

    /// A Cursor pseudo-rectangle: `pixels` row-major in our colours, `mask` one bit per
    /// pixel, rows padded to bytes, most significant bit first.
    #[allow(clippy::too_many_arguments)]
    pub fn cursor(
        &mut self,
        out: &mut Vec<u8>,
        packer: &Packer,
        hot_x: u16,
        hot_y: u16,
        w: u16,
        h: u16,
        pixels: &[u32],
        mask: &[u8],
    ) -> Result<()> {
        let row = usize::from(w).div_ceil(8);
        if pixels.len() != usize::from(w) * usize::from(h) || mask.len() != row * usize::from(h) {
            return Err(Error::Malformed("cursor pixel or mask size"));
        }
        self.rect_header(out, &Rect::new(hot_x, hot_y, w, h), encoding::CURSOR);
        packer.put_all(pixels, out);
        out.extend_from_slice(mask);
        Ok(())
    }

    /// Closes the update. If more than 65534 rectangles were written the count becomes
    /// 0xFFFF and a LastRect ends the list (the caller must know the client accepts it).
    pub fn finish(mut self, out: &mut Vec<u8>) {
        let n = if self.count >= 0xffff {
            self.rect_header(out, &Rect::default(), encoding::LAST_RECT);
            0xffff
        } else {
            self.count as u16
        };
        out[self.start + 2..self.start + 4].copy_from_slice(&n.to_be_bytes());
    }
}
