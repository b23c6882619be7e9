//! `xenvt bench hostile-agent`: a test peer that publishes a channel the way an
//! agent does and then breaks the stream protocol on purpose, over and over, so
//! tests can check that the backend stays up, keeps serving other guests at full
//! speed and keeps its log bounded.

use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use xenvt_ring::mux::frame::{Header, Hello, Op, HDR_LEN, MAX_PAYLOAD, VERSION};
use xenvt_ring::xenstore::{Xenstore, XsClient};
use xenvt_ring::{Channel, ChannelConfig, ChannelStream};

/// How to misbehave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Random bytes instead of frames.
    Garbage,
    /// A HELLO, then REQUESTs without end (valid ids, unknown and invalid services).
    Flood,
    /// A HELLO, a REQUEST for a real service, then data far beyond the credit given.
    Credit,
    /// A HELLO, then a frame whose length exceeds every bound.
    Lengths,
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
                let name: &[u8] = match id % 3 {
                    0 => b"no-such-service",
                    1 => b"bad name\x01",
                    _ => service.as_bytes(),
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
        Mode::All => unreachable!("expanded by the caller"),
    }
}

/// Runs the hostile peer.
pub async fn run(a: HostileArgs) -> anyhow::Result<()> {
    let platform = xenvt_ring::platform::from_env()?;
    let xs = XsClient::connect().await?;
    let domid = xs.read("domid").await?.context("no domid")?;
    let base = format!("/local/domain/{}/{}", domid.trim(), a.path);
    let modes = [Mode::Garbage, Mode::Flood, Mode::Credit, Mode::Lengths];
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut round = 0u64;
    while a.rounds == 0 || round < a.rounds {
        let mode = if a.mode == Mode::All {
            modes[(round % 4) as usize]
        } else {
            a.mode
        };
        round += 1;
        xs.rm(&format!("{base}/state")).await?;
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
