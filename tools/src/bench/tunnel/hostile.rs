//! `xenvt bench hostile-agent`: a test peer that publishes a channel the way an
//! agent does and then breaks the stream protocol on purpose, over and over, so
//! tests can check that the backend stays up, keeps serving other guests at full
//! speed and keeps its log bounded.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenvt_ring::mux::frame::{Header, Hello, Op, HDR_LEN, MAX_PAYLOAD, VERSION};
use xenvt_ring::xenstore::{Xenstore, XsClient};

use xenvt_ring::layout;
use xenvt_ring::platform::PAGE_SIZE;
use xenvt_ring::shm::ShmView;
use xenvt_ring::{Channel, ChannelConfig, ChannelStream, Platform};

/// How to misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Random bytes instead of frames.
    Garbage,
    /// A HELLO, then well-formed REQUESTs without end (unknown and real services).
    Flood,
    /// A HELLO, a REQUEST for a real service, then data far beyond the credit given.
    Credit,
    /// A HELLO, then a frame whose length exceeds every bound.
    Lengths,
    /// A hand-made vchan control page whose ring indices are rewritten behind
    /// the backend's back once it has mapped them.
    Indices,
    /// Each of the above in turn.
    All,
}

/// Arguments of the hostile peer.
#[derive(Args, Debug)]
pub struct HostileArgs {
    /// What to do wrong.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// Where to publish (relative to the domain's home).
    #[arg(long, default_value = "data/xenvt")]
    path: String,
    /// Service named in REQUESTs that should reach a real dom0 service.
    #[arg(long, default_value = "vnc")]
    service: String,
    /// Rounds to play (0: until killed).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
    /// Longest a round lasts if the backend puts up with it.
    #[arg(long, default_value_t = 60)]
    round_secs: u64,
}

fn frame(op: Op, flags: u8, id: u32, payload: &[u8], buf_alloc: u32, fwd: u32) -> Vec<u8> {
    let mut h = Header::new(op, flags, id, payload.len() as u32);
    h.buf_alloc = buf_alloc;
    h.fwd_cnt = fwd;
    let mut v = h.encode().to_vec();
    v.extend_from_slice(payload);
    v
}

fn hello() -> Vec<u8> {
    let p = Hello {
        version: VERSION,
        max_streams: 1 << 20,
    }
    .encode();
    frame(Op::Hello, 0, 0, &p, 0, 0)
}

/// xorshift, so the garbage differs between rounds without a dependency.
fn noise(seed: &mut u64, buf: &mut [u8]) {
    for b in buf {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *b = *seed as u8;
    }
}

async fn play(
    s: &mut ChannelStream,
    mode: Mode,
    service: &str,
    seed: &mut u64,
) -> std::io::Result<()> {
    // The backend speaks first (or at once): take its HELLO out of the way.
    let mut hdr = [0u8; HDR_LEN + 12];
    s.read_exact(&mut hdr).await?;
    match mode {
        Mode::Garbage => {
            let mut buf = vec![0u8; 4096];
            loop {
                noise(seed, &mut buf);
                s.write_all(&buf).await?;
            }
        }
        Mode::Flood => {
            s.write_all(&hello()).await?;
            let mut id = 1u32;
            loop {
                // Well-formed REQUESTs without end: refused (unknown service),
                // delivered, or beyond the stream limit. Framing errors are
                // the other modes' business.
                let name: &[u8] = if id % 4 == 1 {
                    b"no-such-service"
                } else {
                    service.as_bytes()
                };
                s.write_all(&frame(Op::Request, 0, id, name, 1 << 16, 0))
                    .await?;
                id = id.wrapping_add(2);
            }
        }
        Mode::Credit => {
            s.write_all(&hello()).await?;
            s.write_all(&frame(Op::Request, 0, 1, service.as_bytes(), 1 << 16, 0))
                .await?;
            let data = vec![0x5a; 60 << 10];
            loop {
                // Far more than any credit, and lies about the peer's counters.
                s.write_all(&frame(Op::Rw, 0, 1, &data, u32::MAX, u32::MAX))
                    .await?;
                s.write_all(&frame(Op::CreditUpdate, 0, 1, &[], u32::MAX, 12345))
                    .await?;
            }
        }
        Mode::Lengths => {
            s.write_all(&hello()).await?;
            let mut h = Header::new(Op::Rw, 0, 1, 0).encode();
            h[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
            s.write_all(&h).await?;
            let mut h = Header::new(Op::Rw, 0, 1, 0).encode();
            h[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            s.write_all(&h).await?;
            // Wait for the backend to give up on us.
            let mut sink = [0u8; 4096];
            while s.read(&mut sink).await? > 0 {}
            Ok(())
        }
        Mode::All | Mode::Indices => unreachable!("handled by the caller"),
    }
}

struct Fd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for Fd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Serves a vchan control page by hand (both rings inside it), waits for the
/// backend to map it, then rewrites the indices it trusts least: our producer
/// index far beyond the ring, its consumer index backwards.
async fn lying_indices(
    p: &dyn Platform,
    xs: &XsClient,
    base: &str,
    round: u64,
) -> anyhow::Result<()> {
    let evt = p.alloc_unbound(0)?;
    let page = p.share_pages(0, 1, true)?;
    let v = ShmView::of(&*page);
    v.fill(0, PAGE_SIZE, 0)?;
    v.store_u16(layout::LEFT_ORDER, 10, Ordering::Relaxed)?;
    v.store_u16(layout::RIGHT_ORDER, 11, Ordering::Relaxed)?;
    v.store_u8(layout::CLI_LIVE, layout::LIVE_NOT_YET, Ordering::Relaxed)?;
    v.store_u8(layout::CLI_NOTIFY, layout::NOTIFY_WRITE, Ordering::Relaxed)?;
    v.store_u8(layout::SRV_LIVE, layout::LIVE_CONNECTED, Ordering::Release)?;
    let gref = *page.grant_refs().first().context("no grant ref")?;
    xs.write(&format!("{base}/ring-ref"), &gref.to_string())
        .await?;
    xs.write(
        &format!("{base}/event-channel"),
        &evt.local_port().to_string(),
    )
    .await?;
    xs.write(&format!("{base}/serial"), &format!("hostile-{round}"))
        .await?;
    xs.write(&format!("{base}/state"), "ready").await?;
    // SAFETY: the fd belongs to `evt`, which outlives `afd` (declared earlier,
    // dropped later) and is neither closed nor replaced while `afd` exists.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            Fd(evt.as_raw_fd()),
            tokio::io::Interest::READABLE,
        )
    }?;
    let mut lied = false;
    loop {
        match v.load_u8(layout::CLI_LIVE, Ordering::Acquire)? {
            layout::LIVE_CONNECTED if !lied => {
                v.store_u32(layout::RIGHT + layout::PROD, 0x8000_0000, Ordering::Release)?;
                v.store_u32(layout::LEFT + layout::CONS, 0xdead_beef, Ordering::Release)?;
                evt.notify()?;
                lied = true;
            }
            layout::LIVE_CLOSED if lied => return Ok(()),
            _ => {}
        }
        let mut g = afd.readable().await?;
        evt.clear()?;
        g.clear_ready();
    }
}

/// Runs the hostile peer.
pub async fn run(a: HostileArgs) -> anyhow::Result<()> {
    let platform = xenvt_ring::platform::from_env()?;
    let xs = XsClient::connect().await?;
    let domid = xs.read("domid").await?.context("no domid")?;
    let base = format!("/local/domain/{}/{}", domid.trim(), a.path);
    let modes = [
        Mode::Flood,
        Mode::Credit,
        Mode::Garbage,
        Mode::Lengths,
        Mode::Indices,
    ];
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut round = 0u64;
    while a.rounds == 0 || round < a.rounds {
        let mode = if a.mode == Mode::All {
            modes[(round % modes.len() as u64) as usize]
        } else {
            a.mode
        };
        round += 1;
        xs.rm(&format!("{base}/state")).await?;
        if mode == Mode::Indices {
            println!("round {round} {mode:?}");
            let r = tokio::time::timeout(
                Duration::from_secs(a.round_secs),
                lying_indices(&*platform, &xs, &base, round),
            )
            .await;
            println!("round {round} ended: {r:?}");
            continue;
        }
        let ch = Channel::serve_xs(&*platform, &xs, 0, &base, ChannelConfig::default()).await?;
        xs.write(&format!("{base}/serial"), &format!("hostile-{round}"))
            .await?;
        xs.write(&format!("{base}/state"), "ready").await?;
        println!("round {round} {mode:?}");
        let mut s = ChannelStream::new(ch)?;
        // Ends when the backend closes the channel on us, as it should.
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            play(&mut s, mode, &a.service, &mut seed),
        )
        .await;
        println!("round {round} ended: {r:?}");
    }
    Ok(())
}
