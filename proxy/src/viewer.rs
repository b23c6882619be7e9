//! One viewer: our RFB server side.
//!
//! Each viewer has its own [`EncoderState`] and re-encodes from the current view's
//! framebuffer, so any number of viewers can share a domain with their own formats,
//! encodings and zlib streams. A reader task parses the viewer's messages and a writer
//! sends updates; what is pending between them (damage, requests, flags) is coalesced
//! state of fixed size, never a queue, so a viewer that stops reading holds at most one
//! encoded update and slows nobody else.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tracing::debug;

use crate::domain::{lock, Domain, ViewId, ViewerId, ViewerShared};
use crate::error::{Error, Result};
use crate::region::Region;
use crate::rfb::client_msg::Screen;
use crate::rfb::handshake::{server_handshake, ServerConfig, ServerInit};
use crate::rfb::io::RfbReader;
use crate::rfb::server_msg::{EDS_OK, EDS_PROHIBITED, EDS_REASON_SERVER, EDS_REASON_THIS_CLIENT};
use crate::rfb::{
    colour_map_message, ClientLimits, ClientMessage, EncoderState, Framebuffer, Packer,
    PixelFormat, Rect, ServerMessage, UpdateWriter,
};
use crate::upstream::{FENCE_REQUEST, FENCE_SUPPORTED};

/// How long a viewer may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Fence requests a viewer may have outstanding before it is disconnected.
pub const MAX_PENDING_FENCES: usize = 16;

/// How viewers are served.
#[derive(Clone, Debug, Default)]
pub struct ViewerSettings {
    /// VncAuth password; `None` means security type None.
    pub password: Option<Vec<u8>>,
    /// Bounds on what a viewer may send.
    pub limits: ClientLimits,
}

/// What the reader hands the writer, coalesced.
#[derive(Debug, Default)]
struct FromClient {
    pf: Option<PixelFormat>,
    encodings: Option<Vec<i32>>,
    requested: bool,
    full: bool,
    cu: Option<bool>,
    fences: VecDeque<(u32, Vec<u8>)>,
    sds_reply: Option<u16>,
}

/// Serves one viewer of `domain` until it leaves, errs or the domain closes it.
pub async fn run_viewer<S>(domain: Arc<Domain>, stream: S, set: &ViewerSettings) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut stream = stream;
    let cur = domain.current();
    let size = {
        let fb = cur.fb.read().unwrap_or_else(|p| p.into_inner());
        (fb.width(), fb.height())
    };
    let init = ServerInit {
        width: size.0,
        height: size.1,
        pixel_format: PixelFormat::rgb888(),
        name: cur.name.clone(),
    };
    let scfg = ServerConfig {
        password: set.password.clone(),
    };
    let hello = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        server_handshake(&mut stream, &scfg, &init),
    )
    .await
    .map_err(|_| Error::Refused("viewer handshake timed out"))??;
    debug!(version = ?hello.version, shared = hello.shared, "viewer connected");
    domain.stats().viewer_connected();
    let (id, shared) = domain.attach();
    let _guard = Detach(&domain, id);
    let (rd, wr) = tokio::io::split(stream);
    let from = Arc::new(Mutex::new(FromClient::default()));
    let mut w = Writer {
        out: wr,
        enc: EncoderState::new(PixelFormat::rgb888())?,
        size,
        view: cur.id,
        requested: false,
        cu: false,
        cu_announced: false,
        damage: Region::new(),
        name_due: false,
        cursor_due: false,
        letterbox: None,
        buf: Vec::new(),
    };
    let reader = read_loop(rd, &domain, id, &from, &shared, set.limits);
    let writer = async {
        loop {
            if !w.round(&domain, &from, &shared).await? {
                shared.notify.notified().await;
            }
        }
    };
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

struct Detach<'a>(&'a Domain, u64);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.0.detach(self.1);
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    rd: R,
    domain: &Domain,
    who: ViewerId,
    from: &Mutex<FromClient>,
    shared: &ViewerShared,
    limits: ClientLimits,
) -> Result<()> {
    let max = limits.max_cut_text as usize + 64 * 1024;
    let mut rd = RfbReader::new(rd, max);
    loop {
        let m = match rd.client_message(&limits).await {
            Ok(m) => m,
            Err(crate::rfb::Error::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let poke = |f: &mut dyn FnMut(&mut FromClient) -> Result<()>| -> Result<()> {
            f(&mut lock(from))?;
            shared.notify.notify_one();
            Ok(())
        };
        match m {
            ClientMessage::SetPixelFormat(pf) => poke(&mut |s| {
                s.pf = Some(pf);
                Ok(())
            })?,
            ClientMessage::SetEncodings(list) => {
                let mut list = Some(list);
                poke(&mut |s| {
                    s.encodings = list.take();
                    Ok(())
                })?
            }
            ClientMessage::FramebufferUpdateRequest { incremental, .. } => poke(&mut |s| {
                s.requested = true;
                s.full |= !incremental;
                Ok(())
            })?,
            ClientMessage::KeyEvent { down, key } => domain.key(who, down, key),
            ClientMessage::QemuKeyEvent { down, keysym, .. } => domain.key(who, down, keysym),
            ClientMessage::PointerEvent { buttons, x, y } => domain.pointer(buttons, x, y),
            ClientMessage::ClientCutText(t) => domain.cut_text(&t),
            ClientMessage::EnableContinuousUpdates { enable, .. } => poke(&mut |s| {
                s.cu = Some(enable);
                Ok(())
            })?,
            ClientMessage::Fence { flags, payload } => {
                let mut p = Some(payload);
                poke(&mut |s| {
                    if s.fences.len() >= MAX_PENDING_FENCES {
                        return Err(Error::Refused("too many outstanding fences"));
                    }
                    s.fences.push_back((flags, p.take().unwrap_or_default()));
                    Ok(())
                })?
            }
            ClientMessage::SetDesktopSize { .. } => poke(&mut |s| {
                // The size follows the view; viewers may not change it.
                s.sds_reply = Some(EDS_PROHIBITED);
                s.requested = true;
                Ok(())
            })?,
        }
    }
}

struct Writer<W> {
    out: WriteHalf<W>,
    enc: EncoderState,
    /// The framebuffer size the viewer has.
    size: (u16, u16),
    /// The view the viewer was last drawn from.
    view: ViewId,
    requested: bool,
    cu: bool,
    cu_announced: bool,
    damage: Region,
    name_due: bool,
    cursor_due: bool,
    /// For a viewer that cannot resize: the view drawn into its fixed size.
    letterbox: Option<Framebuffer>,
    buf: Vec<u8>,
}

impl<W: AsyncRead + AsyncWrite + Unpin> Writer<W> {
    /// Does whatever is pending; false when there was nothing to do.
    async fn round(
        &mut self,
        domain: &Domain,
        from: &Mutex<FromClient>,
        shared: &ViewerShared,
    ) -> Result<bool> {
        let (dom, cl) = {
            let mut d = lock(&shared.state);
            let dom = std::mem::take(&mut *d);
            drop(d);
            (dom, std::mem::take(&mut *lock(from)))
        };
        if dom.closed {
            return Err(Error::Refused("the proxy is stopping"));
        }
        self.buf.clear();
        let out = &mut self.buf;
        let mut force_full = cl.full;
        if let Some(pf) = cl.pf {
            self.enc.set_pixel_format(pf)?;
            if !pf.true_colour {
                colour_map_message().write(out);
            }
            force_full = true;
        }
        if let Some(list) = cl.encodings {
            self.enc.set_encodings(&list);
            if self.enc.encodings().continuous_updates && !self.cu_announced {
                self.cu_announced = true;
                ServerMessage::EndOfContinuousUpdates.write(out);
            }
        }
        match cl.cu {
            Some(true) => self.cu = true,
            Some(false) => {
                self.cu = false;
                ServerMessage::EndOfContinuousUpdates.write(out);
            }
            None => {}
        }
        for (flags, payload) in cl.fences {
            if flags & FENCE_REQUEST != 0 {
                ServerMessage::Fence {
                    flags: flags & FENCE_SUPPORTED,
                    payload,
                }
                .write(out);
            }
        }
        if dom.bell {
            ServerMessage::Bell.write(out);
        }
        if let Some(t) = dom.cut_text {
            ServerMessage::ServerCutText(t.to_vec()).write(out);
        }
        self.requested |= cl.requested;
        if dom.view_changed {
            force_full = true;
            self.name_due = true;
            self.cursor_due = true;
        }
        self.name_due |= dom.name_changed;
        self.cursor_due |= dom.cursor_changed;
        self.damage.add_region(&dom.damage);
        let mut sds_reply = cl.sds_reply;
        if !self.enc.encodings().extended_desktop_size {
            sds_reply = None;
        }
        let mut did = !out.is_empty();
        if self.requested || self.cu {
            let sent = self.update(domain, force_full, dom.resized, sds_reply)?;
            domain.stats().update_sent(sent);
            did |= sent;
        } else if force_full {
            // Remember the full update for when it is asked for.
            self.damage.add(Rect::new(0, 0, u16::MAX, u16::MAX));
        }
        if !self.buf.is_empty() {
            domain.stats().bytes_sent(self.buf.len());
            self.out
                .write_all(&self.buf)
                .await
                .map_err(crate::rfb::Error::Io)?;
        }
        Ok(did)
    }

    fn can_resize(&self) -> bool {
        let e = self.enc.encodings();
        e.desktop_size || e.extended_desktop_size
    }

    /// Appends one FramebufferUpdate if there is anything to send.
    fn update(
        &mut self,
        domain: &Domain,
        force_full: bool,
        resized: bool,
        sds_reply: Option<u16>,
    ) -> Result<bool> {
        let cur = domain.current();
        let fb = cur.fb.read().unwrap_or_else(|p| p.into_inner());
        let vsize = (fb.width(), fb.height());
        let mut full = force_full;
        if cur.id != self.view {
            self.view = cur.id;
            full = true;
            self.name_due = true;
            self.cursor_due = true;
        }
        let resize = vsize != self.size && self.can_resize();
        full |= resize || (resized && vsize != self.size);
        let target = if resize { vsize } else { self.size };
        let whole = Rect::new(0, 0, target.0, target.1);
        if full {
            self.damage.clear();
            self.damage.add(whole);
        }
        self.damage.clip(&whole);
        let e = self.enc.encodings().clone();
        let name_due = self.name_due && e.desktop_name;
        let cursor = cur.cursor.as_ref().filter(|_| self.cursor_due && e.cursor);
        if self.damage.is_empty() && !resize && !name_due && cursor.is_none() && sds_reply.is_none()
        {
            return Ok(false);
        }
        let out = &mut self.buf;
        let mut upd = UpdateWriter::begin(out);
        if resize {
            self.size = vsize;
            self.letterbox = None;
            if e.extended_desktop_size {
                upd.extended_desktop_size(
                    out,
                    EDS_REASON_SERVER,
                    EDS_OK,
                    vsize.0,
                    vsize.1,
                    &[screen(vsize)],
                );
            } else {
                upd.desktop_size(out, vsize.0, vsize.1);
            }
        }
        if let Some(status) = sds_reply {
            upd.extended_desktop_size(
                out,
                EDS_REASON_THIS_CLIENT,
                status,
                self.size.0,
                self.size.1,
                &[screen(self.size)],
            );
        }
        if name_due {
            upd.desktop_name(out, &cur.name);
        }
        self.name_due = false;
        if let Some(c) = cursor {
            let packer = Packer::new(*self.enc.pixel_format());
            upd.cursor(
                out, &packer, c.hot_x, c.hot_y, c.width, c.height, &c.pixels, &c.mask,
            )?;
        }
        self.cursor_due = false;
        let damage = self.damage.take();
        if vsize == self.size {
            for r in damage.rects() {
                self.enc.encode(&mut upd, out, &fb, r)?;
            }
        } else {
            // A viewer that cannot resize: the view, anchored top left, cropped or
            // bordered in black to the viewer's size.
            let lb = match &mut self.letterbox {
                Some(lb) => lb,
                None => self
                    .letterbox
                    .insert(Framebuffer::new(self.size.0, self.size.1)?),
            };
            for r in damage.rects() {
                lb.fill_rect(r, 0)?;
                if let Some(i) = r.intersect(&fb.rect()) {
                    lb.put_rect(&i, &fb.read_rect(&i)?)?;
                }
                self.enc.encode(&mut upd, out, lb, r)?;
            }
        }
        upd.finish(out);
        self.requested = false;
        Ok(true)
    }
}

fn screen(size: (u16, u16)) -> Screen {
    Screen {
        id: 0,
        rect: Rect::new(0, 0, size.0, size.1),
        flags: 0,
    }
}
