//! `xenvt chan`: one end of a checked transfer over a xenvt channel.
//!
//! The serving end grants the channel and publishes it in xenstore (the guest's
//! role); the connecting end maps it (dom0's role). Each end sends a checked
//! pattern stream and checks what it receives, byte by byte, then prints one JSON
//! [`ChanReport`]. The platform comes from the environment: the simulated host
//! when `XENVT_SIM_DEV` is set, the real Xen devices otherwise.

use std::time::Instant;

use anyhow::{ensure, Context};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use xenvt_ring::ChannelStream;

use crate::pattern::{Checker, Source};

/// Arguments of `xenvt chan`.
#[derive(Args, Debug)]
pub struct ChanArgs {
    #[command(subcommand)]
    mode: Mode,
    /// Bytes to send.
    #[arg(long, global = true, default_value_t = 0)]
    send: u64,
    /// Bytes to receive; without it, receive until the peer closes, and report the count.
    #[arg(long, global = true)]
    recv: Option<u64>,
    /// Seed of the stream we send.
    #[arg(long, global = true, default_value_t = 1)]
    send_seed: u64,
    /// Seed of the stream we expect.
    #[arg(long, global = true, default_value_t = 2)]
    recv_seed: u64,
    /// Size of each write.
    #[arg(long, global = true, default_value_t = 64 << 10)]
    chunk: usize,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Grant a channel to `--peer` and publish it at xenstore `--path` (relative
    /// paths are under this domain's /local/domain/<id>). Prints `ready` once published.
    Serve {
        #[arg(long)]
        path: String,
        #[arg(long, default_value_t = 0)]
        peer: u16,
        /// Ring order of both directions (10..=20).
        #[arg(long, default_value_t = 16)]
        order: u8,
        /// Ring order of the client-to-server ring, overriding `--order`. Two rings
        /// inside the control page need different orders (10 and 11), as in vchan.
        #[arg(long)]
        left_order: Option<u8>,
        /// Ring order of the server-to-client ring, overriding `--order`.
        #[arg(long)]
        right_order: Option<u8>,
    },
    /// Map the channel that domain `--peer` published at xenstore `--path`. Prints
    /// `connected` once mapped.
    Connect {
        #[arg(long)]
        path: String,
        #[arg(long)]
        peer: u16,
    },
}

/// What one end saw.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChanReport {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received and checked.
    pub received: u64,
    /// sha256 of what was received.
    pub received_sha256: String,
    /// sha256 of what was sent, so the other end's view can be cross-checked.
    pub sent_sha256: String,
    /// Seconds from connection to the end of both directions.
    pub secs: f64,
}

/// Runs one end.
pub async fn run(a: ChanArgs) -> anyhow::Result<()> {
    let s = match &a.mode {
        Mode::Serve {
            path,
            peer,
            order,
            left_order,
            right_order,
        } => {
            let cfg = xenvt_ring::ChannelConfig {
                left_order: left_order.unwrap_or(*order),
                right_order: right_order.unwrap_or(*order),
            };
            let s = serve_with(path, *peer, cfg).await?;
            println!("ready");
            s
        }
        Mode::Connect { path, peer } => {
            let s = connect(path, *peer).await?;
            println!("connected");
            s
        }
    };
    let report = transfer(s, &a).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn transfer<S: AsyncRead + AsyncWrite + Send + 'static>(
    s: S,
    a: &ChanArgs,
) -> anyhow::Result<ChanReport> {
    let start = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(s);
    let (send, seed, chunk) = (a.send, a.send_seed, a.chunk.max(1));
    let sender = async move {
        let mut src = Source::new(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; chunk];
        let mut left = send;
        while left > 0 {
            let n = left.min(chunk as u64) as usize;
            src.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            wr.write_all(&buf[..n]).await.context("send")?;
            left -= n as u64;
        }
        wr.flush().await?;
        anyhow::Ok((wr, crate::pattern::hex(&hash.finalize())))
    };
    let (want, rseed) = (a.recv, a.recv_seed);
    let receiver = async move {
        let mut chk = Checker::new(rseed);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let cap = match want {
                Some(w) if chk.count() >= w => break,
                Some(w) => (w - chk.count()).min(buf.len() as u64) as usize,
                None => buf.len(),
            };
            let n = rd.read(&mut buf[..cap]).await.context("receive")?;
            if n == 0 {
                if let Some(w) = want {
                    anyhow::bail!("peer closed after {} of {w} bytes", chk.count());
                }
                break;
            }
            chk.check(&buf[..n])?;
        }
        anyhow::Ok(chk)
    };
    let ((wr, sent_sha256), chk) = tokio::try_join!(sender, receiver)?;
    drop(wr);
    let received = chk.count();
    ensure!(
        want.is_none_or(|w| w == received),
        "received {received} bytes"
    );
    Ok(ChanReport {
        sent: a.send,
        received,
        received_sha256: chk.sha256(),
        sent_sha256,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Grants a channel with both rings of `order` to `peer` and publishes it at
/// `path`; returns the stream.
pub async fn serve(path: &str, peer: u16, order: u8) -> anyhow::Result<ChannelStream> {
    let cfg = xenvt_ring::ChannelConfig {
        left_order: order,
        right_order: order,
    };
    serve_with(path, peer, cfg).await
}

/// Grants a channel shaped by `cfg` to `peer` and publishes it at `path`.
pub async fn serve_with(
    path: &str,
    peer: u16,
    cfg: xenvt_ring::ChannelConfig,
) -> anyhow::Result<ChannelStream> {
    let platform = xenvt_ring::platform::from_env()?;
    let xs = xenvt_ring::xenstore::XsClient::connect().await?;
    let ch = xenvt_ring::Channel::serve_xs(&*platform, &xs, peer, path, cfg)
        .await
        .with_context(|| format!("serve a channel at {path}"))?;
    Ok(ChannelStream::new(ch)?)
}

/// Maps the channel `peer` published at `path`; returns the stream.
pub async fn connect(path: &str, peer: u16) -> anyhow::Result<ChannelStream> {
    let platform = xenvt_ring::platform::from_env()?;
    let xs = xenvt_ring::xenstore::XsClient::connect().await?;
    let ch = xenvt_ring::Channel::connect_xs(&*platform, &xs, peer, path)
        .await
        .with_context(|| format!("connect to the channel at {path}"))?;
    Ok(ChannelStream::new(ch)?)
}
