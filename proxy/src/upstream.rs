//! The desktop view's producer: our RFB client side towards one upstream desktop.
//!
//! Upstream updates are decoded into the decoder's private framebuffer; at the end of
//! each update the changed areas are copied into the view's shared framebuffer and
//! reported as damage. Input from viewers reaches the upstream through a bounded queue
//! drained by a writer task, so a desktop that stops reading never blocks a viewer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::domain::{Domain, ViewHandle};
use crate::error::{Error, Result};
use crate::region::{Region, MAX_RECTS};
use crate::rfb::decode::{ClientDecoder, DecoderLimits, ServerEvent};
use crate::rfb::encoding;
use crate::rfb::handshake::{client_handshake, ClientConfig};
use crate::rfb::io::RfbReader;
use crate::rfb::{ClientMessage, Framebuffer, PixelFormat, Rect};
use crate::view::{CursorShape, ViewInput, ViewKind};

/// How long an upstream may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages queued towards one upstream before input is dropped.
pub const INPUT_QUEUE: usize = 512;
/// Fence flag: the peer asks for a reply.
pub const FENCE_REQUEST: u32 = 1 << 31;
/// The fence flags we honour (BlockBefore, BlockAfter, SyncNext): we answer in order.
pub const FENCE_SUPPORTED: u32 = 0b111;

/// How we talk to one upstream.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    /// Pixel encodings to ask for, most preferred first.
    pub encodings: Vec<i32>,
    /// Enable continuous updates when offered.
    pub continuous_updates: bool,
    /// VncAuth password, if the desktop asks.
    pub password: Option<Vec<u8>>,
    /// The view slot it feeds: "desktop" (shown when it connects), or a configured
    /// upstream's name (shown when a binding asks for it).
    pub slot: String,
}

/// Viewer input for the desktop: queued to the upstream's writer, dropped (and counted)
/// when the queue is full.
struct DesktopInput {
    tx: mpsc::Sender<ClientMessage>,
    dropped: AtomicU64,
}

impl DesktopInput {
    fn send(&self, m: ClientMessage) {
        if self.tx.try_send(m).is_err() && self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!("desktop is not reading; dropping input");
        }
    }
}

impl ViewInput for DesktopInput {
    fn key(&self, down: bool, keysym: u32) {
        self.send(ClientMessage::KeyEvent { down, key: keysym });
    }
    fn pointer(&self, buttons: u8, x: u16, y: u16) {
        self.send(ClientMessage::PointerEvent { buttons, x, y });
    }
    fn cut_text(&self, text: &[u8]) {
        self.send(ClientMessage::ClientCutText(text.to_vec()));
    }
}

fn encodings_for(s: &UpstreamSettings) -> Vec<i32> {
    let mut v = s.encodings.clone();
    v.extend_from_slice(&[
        encoding::COPY_RECT,
        encoding::DESKTOP_SIZE,
        encoding::EXTENDED_DESKTOP_SIZE,
        encoding::DESKTOP_NAME,
        encoding::LAST_RECT,
        encoding::CURSOR,
        encoding::FENCE,
    ]);
    if s.continuous_updates {
        v.push(encoding::CONTINUOUS_UPDATES);
    }
    v
}

/// Copies `r` (already checked against both) from `src` to `dst`.
fn copy_area(dst: &mut Framebuffer, src: &Framebuffer, r: &Rect) {
    let w = usize::from(dst.width());
    let (x, rw) = (usize::from(r.x), usize::from(r.w));
    let s = src.pixels();
    let d = dst.pixels_mut();
    for y in usize::from(r.y)..usize::from(r.y) + usize::from(r.h) {
        let o = y * w + x;
        d[o..o + rw].copy_from_slice(&s[o..o + rw]);
    }
}

/// Serves one upstream desktop connection for `domain` until it ends or is replaced.
/// `what` says where it came from, for the logs.
pub async fn run_desktop<S>(domain: Arc<Domain>, stream: S, set: &UpstreamSettings) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut stream = stream;
    let ccfg = ClientConfig {
        password: set.password.clone(),
        ..ClientConfig::default()
    };
    let (_, init) = tokio::time::timeout(HANDSHAKE_TIMEOUT, client_handshake(&mut stream, &ccfg))
        .await
        .map_err(|_| Error::Refused("desktop handshake timed out"))??;
    info!(
        width = init.width,
        height = init.height,
        name = %init.name.escape_debug(),
        "desktop connected"
    );
    let pf = PixelFormat::rgb888();
    let mut dec = ClientDecoder::new(pf, init.width, init.height, DecoderLimits::default())?;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut first = Vec::new();
    ClientMessage::SetPixelFormat(pf).write(&mut first);
    ClientMessage::SetEncodings(encodings_for(set)).write(&mut first);
    ClientMessage::FramebufferUpdateRequest {
        incremental: false,
        rect: Rect::new(0, 0, init.width, init.height),
    }
    .write(&mut first);
    wr.write_all(&first).await.map_err(crate::rfb::Error::Io)?;

    let (tx, mut rx) = mpsc::channel::<ClientMessage>(INPUT_QUEUE);
    let writer = async move {
        let mut buf = Vec::new();
        while let Some(m) = rx.recv().await {
            buf.clear();
            m.write(&mut buf);
            // Batch whatever else is queued into one write.
            while buf.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(m) => m.write(&mut buf),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    };
    let writer = tokio::spawn(writer.in_current_span());
    let input = Arc::new(DesktopInput {
        tx: tx.clone(),
        dropped: AtomicU64::new(0),
    });
    let kind = if set.slot == "desktop" {
        ViewKind::Desktop
    } else {
        ViewKind::Upstream
    };
    let view = domain.add_view(
        kind,
        &set.slot,
        Framebuffer::new(init.width, init.height)?,
        input.clone(),
    );
    // A newer desktop replaces an older one in the same slot.
    domain.close_others(&set.slot, view.id());
    let closer = view.closer();
    let mut up = Upstream {
        view,
        tx,
        cu: set.continuous_updates,
        cu_active: false,
        shown: kind != ViewKind::Desktop,
    };
    up.view.set_detail(&init.name);
    let rd = domain.stats().count_upstream(rd);
    let mut reader = RfbReader::new(rd, DecoderLimits::default().max_rect_bytes + 4096);
    let res = tokio::select! {
        r = up.run(&mut reader, &mut dec) => match r {
            Err(Error::Rfb(crate::rfb::Error::Closed)) => Ok(()),
            r => r,
        },
        _ = closer.notified() => {
            info!("desktop replaced by a newer connection");
            Ok(())
        }
    };
    writer.abort();
    let dropped = input.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        warn!(
            dropped,
            "input events dropped for a desktop that did not read"
        );
    }
    drop(up);
    res
}

struct Upstream {
    view: ViewHandle,
    tx: mpsc::Sender<ClientMessage>,
    cu: bool,
    cu_active: bool,
    shown: bool,
}

impl Upstream {
    fn control(&self, m: ClientMessage) -> Result<()> {
        self.tx
            .try_send(m)
            .map_err(|_| Error::Refused("desktop does not read what we send"))
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut RfbReader<R>,
        dec: &mut ClientDecoder,
    ) -> Result<()> {
        let mut pending = Region::new();
        let mut resized = false;
        loop {
            match reader.server_event(dec).await? {
                ServerEvent::UpdateBegin { .. } => {}
                ServerEvent::Rect { rect, .. } => pending.add(rect),
                ServerEvent::DesktopSize { width, height }
                | ServerEvent::ExtendedDesktopSize {
                    status: 0,
                    width,
                    height,
                    ..
                } => {
                    debug!(width, height, "desktop resized");
                    resized = true;
                    pending.clear();
                }
                ServerEvent::ExtendedDesktopSize { status, .. } => {
                    debug!(status, "desktop refused a resize");
                }
                ServerEvent::DesktopName(n) => {
                    debug!(name = %n.escape_debug(), "desktop renamed");
                    self.view.set_detail(&n);
                }
                ServerEvent::Cursor {
                    hot_x,
                    hot_y,
                    width,
                    height,
                    pixels,
                    mask,
                } => self.view.set_cursor(CursorShape {
                    hot_x,
                    hot_y,
                    width,
                    height,
                    pixels,
                    mask,
                }),
                ServerEvent::UpdateEnd => {
                    self.commit(dec, &mut pending, resized)?;
                    resized = false;
                    if !self.cu_active {
                        let fb = dec.framebuffer();
                        self.control(ClientMessage::FramebufferUpdateRequest {
                            incremental: true,
                            rect: fb.rect(),
                        })?;
                    }
                    if !self.shown {
                        // The desktop takes the screen once it has drawn, unless a
                        // viewer just chose another view by hand.
                        self.shown = true;
                        self.view.show_unless_held();
                    }
                }
                ServerEvent::ColourMap { .. } => {
                    // We asked for true colour; a colour map changes nothing for us.
                }
                ServerEvent::Bell => self.view.bell(),
                ServerEvent::CutText(t) => self.view.cut_text(t),
                ServerEvent::EndOfContinuousUpdates => {
                    if self.cu && !self.cu_active {
                        // The desktop offers continuous updates: switch them on.
                        self.cu_active = true;
                        self.control(ClientMessage::EnableContinuousUpdates {
                            enable: true,
                            rect: dec.framebuffer().rect(),
                        })?;
                    } else if self.cu_active {
                        self.cu_active = false;
                        self.cu = false;
                        self.control(ClientMessage::FramebufferUpdateRequest {
                            incremental: true,
                            rect: dec.framebuffer().rect(),
                        })?;
                    }
                }
                ServerEvent::Fence { flags, payload } => {
                    if flags & FENCE_REQUEST != 0 {
                        self.control(ClientMessage::Fence {
                            flags: flags & FENCE_SUPPORTED,
                            payload,
                        })?;
                    }
                }
            }
        }
    }

    /// Copies what the finished update changed into the view and tells the viewers.
    fn commit(&mut self, dec: &ClientDecoder, pending: &mut Region, resized: bool) -> Result<()> {
        let src = dec.framebuffer();
        {
            let mut fb = self.view.fb().write().unwrap_or_else(|p| p.into_inner());
            if resized || (fb.width(), fb.height()) != (src.width(), src.height()) {
                *fb = src.clone();
            } else {
                if pending.rects().len() >= MAX_RECTS {
                    let b = pending.bounds().unwrap_or_default();
                    pending.clear();
                    pending.add(b);
                }
                for r in pending.rects() {
                    if let Some(r) = r.intersect(&src.rect()) {
                        copy_area(&mut fb, src, &r);
                    }
                }
            }
        }
        if resized {
            pending.clear();
            self.view.resized();
            if self.cu_active {
                self.control(ClientMessage::EnableContinuousUpdates {
                    enable: true,
                    rect: src.rect(),
                })?;
            }
        } else {
            self.view.damage(pending);
            pending.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_area_copies_only_the_rect() {
        let mut src = Framebuffer::new(4, 3).unwrap();
        for (i, p) in src.pixels_mut().iter_mut().enumerate() {
            *p = i as u32 + 1;
        }
        let mut dst = Framebuffer::new(4, 3).unwrap();
        copy_area(&mut dst, &src, &Rect::new(1, 1, 2, 2));
        assert_eq!(dst.pixels(), &[0, 0, 0, 0, 0, 6, 7, 0, 0, 10, 11, 0]);
    }

    #[test]
    fn we_ask_for_what_we_decode() {
        let s = UpstreamSettings {
            encodings: vec![encoding::RAW],
            continuous_updates: false,
            password: None,
            slot: "desktop".into(),
        };
        let e = encodings_for(&s);
        assert_eq!(e[0], encoding::RAW);
        assert!(e.contains(&encoding::EXTENDED_DESKTOP_SIZE));
        assert!(!e.contains(&encoding::CONTINUOUS_UPDATES));
    }
}
