//! The process ends of the two-process benchmarks: a sink or an echo server that
//! listens (or serves a channel), and a source or a pinger that connects.
//!
//! A listening peer prints `ready` once it can be connected to, so the parent
//! starts the other end on that event rather than after a sleep. A measuring peer
//! prints one [`PeerReport`] as JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::PeerReport;
use crate::chan;

/// Which end to play.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Role {
    /// Listen, read `--bytes`, acknowledge with one byte.
    Sink,
    /// Connect, send `--bytes` in `--chunk` writes, wait for the acknowledgement.
    Source,
    /// Listen, echo every byte back.
    Echo,
    /// Connect, do `--round-trips` one-byte round trips.
    Ping,
}

/// Over what.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Transport {
    /// A unix stream socket at `--path`.
    Unix,
    /// A xenvt channel: the listening end serves it at xenstore `--path` for domain
    /// `--peer`, the connecting end maps domain `--peer`'s channel at `--path`.
    Chan,
}

/// Arguments of `xenvt bench peer`.
#[derive(Args, Debug)]
pub struct PeerArgs {
    /// Which end.
    #[arg(long, value_enum)]
    role: Role,
    /// Over what.
    #[arg(long, value_enum)]
    transport: Transport,
    /// Socket path (unix) or xenstore path (chan).
    #[arg(long)]
    path: PathBuf,
    /// The other domain (chan).
    #[arg(long, default_value_t = 0)]
    peer: u16,
    /// Ring order for both directions (chan, serving end).
    #[arg(long, default_value_t = 16)]
    order: u8,
    /// Bytes to move (sink, source).
    #[arg(long, default_value_t = 256 << 20)]
    bytes: u64,
    /// Write size (source).
    #[arg(long, default_value_t = 64 << 10)]
    chunk: usize,
    /// Round trips (ping).
    #[arg(long, default_value_t = 10_000)]
    round_trips: u64,
}

/// Runs one peer.
pub async fn run(a: PeerArgs) -> anyhow::Result<()> {
    let listening = matches!(a.role, Role::Sink | Role::Echo);
    match a.transport {
        Transport::Unix => {
            if listening {
                let _ = std::fs::remove_file(&a.path);
                let l = tokio::net::UnixListener::bind(&a.path)
                    .with_context(|| format!("bind {}", a.path.display()))?;
                println!("ready");
                let (s, _) = l.accept().await?;
                play(&a, s).await
            } else {
                let s = tokio::net::UnixStream::connect(&a.path).await?;
                play(&a, s).await
            }
        }
        Transport::Chan => {
            let path = a.path.to_string_lossy().into_owned();
            let s = if listening {
                let s = chan::serve(&path, a.peer, a.order).await?;
                println!("ready");
                s
            } else {
                chan::connect(&path, a.peer).await?
            };
            play(&a, s).await
        }
    }
}

async fn play<S: AsyncRead + AsyncWrite + Unpin>(a: &PeerArgs, mut s: S) -> anyhow::Result<()> {
    match a.role {
        Role::Sink => {
            let mut buf = vec![0u8; 1 << 20];
            let mut left = a.bytes;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = s.read(&mut buf[..want]).await?;
                anyhow::ensure!(n > 0, "stream ended {left} bytes early");
                left -= n as u64;
            }
            s.write_all(&[1]).await?;
            s.flush().await?;
            // Wait for the source to close, so our end outlives its measurement.
            let _ = s.read(&mut buf[..1]).await;
        }
        Role::Source => {
            let buf = vec![0x5au8; a.chunk];
            let start = Instant::now();
            let mut left = a.bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
            s.flush().await?;
            let mut ack = [0u8; 1];
            s.read_exact(&mut ack).await.context("no acknowledgement")?;
            let secs = start.elapsed().as_secs_f64();
            report(&PeerReport {
                bytes: a.bytes,
                secs,
                ..Default::default()
            })?;
        }
        Role::Echo => {
            let mut b = [0u8; 1];
            while s.read(&mut b).await? == 1 {
                s.write_all(&b).await?;
                s.flush().await?;
            }
        }
        Role::Ping => {
            let mut samples = Vec::with_capacity(a.round_trips as usize);
            let mut b = [7u8; 1];
            let start = Instant::now();
            for _ in 0..a.round_trips {
                let t = Instant::now();
                s.write_all(&b).await?;
                s.flush().await?;
                s.read_exact(&mut b).await?;
                samples.push(t.elapsed().as_secs_f64() * 1e6);
            }
            report(&PeerReport {
                round_trips: a.round_trips,
                secs: start.elapsed().as_secs_f64(),
                rtt_median_us: super::median(&mut samples),
                ..Default::default()
            })?;
        }
    }
    Ok(())
}

fn report(r: &PeerReport) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(r)?);
    Ok(())
}
