//! `xenvt bench fps`: a frame meter for any RFB server, to compare transports to the
//! same desktop (the lab's `desktop-bench` runs it in dom0 against three paths).
//!
//! It is the viewer of `xenvt bench proxy`: it asks for an incremental update as
//! soon as one ends, so the frame rate is what the path delivers, not a polling
//! rate. The first (whole) frame is not counted.

use std::time::Duration;

use anyhow::{bail, Context};

use super::proxy::{encoding_of, measure, Phase};

/// Options of the frame meter.
#[derive(clap::Args, Debug)]
pub struct FpsArgs {
    /// The server: `tcp:HOST:PORT` or `unix:PATH`.
    #[arg(long)]
    pub connect: String,
    /// The encoding asked for: raw, zrle, tight or hextile.
    #[arg(long, default_value = "raw")]
    pub encoding: String,
    /// Seconds to count frames.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Give up when the server has not sent its first frame after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

/// The JSON line the meter prints.
pub(crate) fn report(p: &Phase) -> String {
    serde_json::json!({
        "frames": p.frames,
        "bytes": p.bytes,
        "secs": (p.secs * 1000.0).round() / 1000.0,
        "fps": ((p.frames as f64 / p.secs.max(1e-9)) * 100.0).round() / 100.0,
    })
    .to_string()
}

/// Runs `xenvt bench fps`.
pub async fn run(a: FpsArgs) -> anyhow::Result<()> {
    let list = encoding_of(&a.encoding)?;
    let sane = |s: f64| s > 0.0 && s <= 3600.0;
    if !sane(a.secs) || !sane(a.timeout) {
        bail!("--secs and --timeout take 0 to 3600 seconds");
    }
    let limit = Duration::from_secs_f64(a.secs + a.timeout);
    let phase = if let Some(addr) = a.connect.strip_prefix("tcp:") {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        tokio::time::timeout(limit, measure(s, &list, a.secs)).await
    } else if let Some(path) = a.connect.strip_prefix("unix:") {
        let s = tokio::net::UnixStream::connect(path)
            .await
            .with_context(|| format!("connect {path}"))?;
        tokio::time::timeout(limit, measure(s, &list, a.secs)).await
    } else {
        bail!("--connect takes tcp:HOST:PORT or unix:PATH");
    };
    let phase = phase.map_err(|_| anyhow::anyhow!("no frames within {:.0} s", a.timeout))??;
    println!("{}", report(&phase));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_one_json_line_with_the_rate() {
        let r = report(&Phase {
            frames: 30,
            bytes: 3000,
            pixels: 0,
            secs: 2.0,
        });
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(v["frames"], 30);
        assert_eq!(v["fps"], 15.0);
        assert!(!r.contains('\n'));
    }
}
