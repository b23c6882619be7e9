//! `xenvt bench relay`: a plain relay process (accept, connect onwards, copy
//! both ways through a user-space buffer), the shape socat has. Two of them in
//! a chain, joined by a unix socket, are what the tunnel is measured against.

use anyhow::{bail, Context};
use clap::Args;
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// Arguments of a relay.
#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Where to listen: `tcp:IP:PORT` or `unix:PATH`. Prints `listening ADDR` once bound.
    #[arg(long)]
    listen: String,
    /// Where to connect each accepted connection: `unix:PATH`.
    #[arg(long)]
    to: String,
}

async fn pipe<S>(mut a: S, to: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Ok(mut b) = UnixStream::connect(&to).await {
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    }
}

/// Runs the relay until killed.
pub async fn run(a: RelayArgs) -> anyhow::Result<()> {
    let Some(to) = a.to.strip_prefix("unix:").map(str::to_owned) else {
        bail!("--to must be unix:PATH");
    };
    if let Some(addr) = a.listen.strip_prefix("tcp:") {
        let l = TcpListener::bind(addr).await.context("bind")?;
        println!("listening {}", l.local_addr()?);
        loop {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            tokio::spawn(pipe(s, to.clone()));
        }
    } else if let Some(path) = a.listen.strip_prefix("unix:") {
        let l = UnixListener::bind(path).context("bind")?;
        println!("listening {path}");
        loop {
            let (s, _) = l.accept().await?;
            tokio::spawn(pipe(s, to.clone()));
        }
    } else {
        bail!("--listen must be tcp:IP:PORT or unix:PATH");
    }
}
