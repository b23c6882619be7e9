//! `xenvt bench proxy`: a viewer straight on a real Xvnc against the same viewer through
//! xenvt-proxy, on a changing 1920x1080 desktop, plus the proxy's encoder speed.
//!
//! Ratios: `fps_proxy_vs_direct` (goal >= 0.95), `bytes_proxy_vs_direct` (bytes per
//! frame, goal <= 1.05) and `proxy_cpu_per_frame_vs_xvnc` (the proxy's CPU time per frame
//! over Xvnc's when serving the viewer directly).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use xenvt_proxy::rfb::decode::{ClientDecoder, DecoderLimits, ServerEvent};
use xenvt_proxy::rfb::encode::bench_frame;
use xenvt_proxy::rfb::encoding;
use xenvt_proxy::rfb::handshake::{client_handshake, ClientConfig};
use xenvt_proxy::rfb::io::RfbReader;
use xenvt_proxy::rfb::{ClientMessage, EncoderState, PixelFormat, Rect, UpdateWriter};

use super::ratio;

/// Options of the proxy benchmark.
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// A short run for CI.
    #[arg(long)]
    quick: bool,
    /// Seconds per measured phase (default 8; 3 with --quick).
    #[arg(long)]
    secs: Option<f64>,
    /// The viewer's encoding: zrle, tight, hextile or raw.
    #[arg(long, default_value = "zrle")]
    encoding: String,
    /// What the proxy asks Xvnc for (its `upstream.encodings`).
    #[arg(long, default_value = "raw")]
    upstream: String,
    /// Let the proxy use continuous updates from Xvnc.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    upstream_cu: bool,
    /// The xenvt-proxy binary (default: beside this one).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
}

pub(crate) fn encoding_of(name: &str) -> anyhow::Result<Vec<i32>> {
    Ok(match name {
        "zrle" => vec![encoding::ZRLE],
        "tight" => vec![encoding::TIGHT, encoding::TIGHT_QUALITY_0 + 8],
        "hextile" => vec![encoding::HEXTILE],
        "raw" => vec![encoding::RAW],
        _ => bail!("unknown encoding {name:?}"),
    })
}

/// Kills a child process on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Counts the bytes read through it.
struct Counting<S> {
    inner: S,
    n: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        self.n.fetch_add(got as u64, Ordering::Relaxed);
        r
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks / hz
}

/// What one viewer measured.
pub(crate) struct Phase {
    pub(crate) frames: u64,
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
}

/// One viewer pulling updates as fast as they come for `secs`.
pub(crate) async fn measure<S>(s: S, list: &[i32], secs: f64) -> anyhow::Result<Phase>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut s = s;
    let (_, init) = client_handshake(&mut s, &ClientConfig::default()).await?;
    let pf = PixelFormat::rgb888();
    let mut dec = ClientDecoder::new(pf, init.width, init.height, DecoderLimits::default())?;
    let (rd, mut wr) = tokio::io::split(s);
    let n = Arc::new(AtomicU64::new(0));
    let mut rd = RfbReader::new(
        Counting {
            inner: rd,
            n: n.clone(),
        },
        80 << 20,
    );
    let mut encs = list.to_vec();
    encs.extend_from_slice(&[encoding::DESKTOP_SIZE, encoding::LAST_RECT]);
    let mut m = Vec::new();
    ClientMessage::SetPixelFormat(pf).write(&mut m);
    ClientMessage::SetEncodings(encs).write(&mut m);
    let full = Rect::new(0, 0, init.width, init.height);
    ClientMessage::FramebufferUpdateRequest {
        incremental: false,
        rect: full,
    }
    .write(&mut m);
    wr.write_all(&m).await?;
    // The first (whole) frame is not counted.
    let mut counting = false;
    let (mut frames, mut start, mut base) = (0u64, Instant::now(), 0u64);
    loop {
        let mut rects = 0;
        loop {
            match rd.server_event(&mut dec).await? {
                ServerEvent::Rect { .. } => rects += 1,
                ServerEvent::UpdateEnd => break,
                _ => {}
            }
        }
        if !counting {
            counting = true;
            start = Instant::now();
            base = n.load(Ordering::Relaxed);
        } else if rects > 0 {
            frames += 1;
        }
        let el = start.elapsed().as_secs_f64();
        if counting && el >= secs {
            return Ok(Phase {
                frames,
                bytes: n.load(Ordering::Relaxed) - base,
                secs: el,
            });
        }
        let mut m = Vec::new();
        ClientMessage::FramebufferUpdateRequest {
            incremental: true,
            rect: full,
        }
        .write(&mut m);
        wr.write_all(&m).await?;
    }
}

/// Encoder speed on a desktop-like 1920x1080 frame, in megapixels per second.
fn encoder_rates(reps: u32) -> anyhow::Result<()> {
    let fb = bench_frame(1920, 1080)?;
    for (name, list) in [
        ("zrle", vec![encoding::ZRLE]),
        (
            "tight",
            vec![encoding::TIGHT, encoding::TIGHT_QUALITY_0 + 8],
        ),
    ] {
        let mut st = EncoderState::new(PixelFormat::rgb888())?;
        st.set_encodings(&list);
        let t = Instant::now();
        let mut bytes = 0;
        for _ in 0..reps {
            let mut out = Vec::new();
            let mut upd = UpdateWriter::begin(&mut out);
            st.encode(&mut upd, &mut out, &fb, &fb.rect())?;
            upd.finish(&mut out);
            bytes = out.len();
        }
        let s = t.elapsed().as_secs_f64();
        let mps = 1920.0 * 1080.0 * f64::from(reps) / s / 1e6;
        println!("encoder {name}: {mps:.1} MP/s, {bytes} bytes per frame");
    }
    Ok(())
}

fn start_xvnc(sock: &Path) -> anyhow::Result<(Guard, u32)> {
    let mut child = Command::new("Xvnc")
        .args([
            "-displayfd",
            "1",
            "-rfbport",
            "-1",
            "-SecurityTypes",
            "None",
        ])
        .args(["-geometry", "1920x1080", "-depth", "24", "-nolisten", "tcp"])
        .arg("-rfbunixpath")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("Xvnc (tigervnc-standalone-server) is needed")?;
    let out = child.stdout.take().context("Xvnc stdout")?;
    let g = Guard(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    Ok((g, line.trim().parse().context("display number")?))
}

fn start_proxy(
    bin: &Path,
    dir: &Path,
    sock: &Path,
    upstream: &str,
    cu: bool,
) -> anyhow::Result<(Guard, String)> {
    let cfg = dir.join("proxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\nencodings = [\"{upstream}\"]\ncontinuous_updates = {cu}\n\
             [[domain]]\ndomid = 1\nname = \"bench\"\nport = 0\nconnect = \"unix:{}\"\n",
            sock.display()
        ),
    )?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .env("XENVT_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", bin.display()))?;
    let out = child.stdout.take().context("proxy stdout")?;
    let g = Guard(child);
    let mut addr = None;
    for line in BufReader::new(out).lines() {
        let line = line?;
        if let Some(a) = line
            .strip_prefix("xenvt-proxy: viewers domain=1 addr=")
            .map(str::to_owned)
        {
            addr = Some(a);
        }
        if line == "xenvt-proxy: ready" {
            break;
        }
    }
    Ok((g, addr.context("the proxy reported no viewer address")?))
}

/// Runs the benchmark.
pub async fn run(a: ProxyArgs) -> anyhow::Result<()> {
    let secs = a.secs.unwrap_or(if a.quick { 3.0 } else { 8.0 });
    let list = encoding_of(&a.encoding)?;
    encoder_rates(if a.quick { 3 } else { 10 })?;
    let bin = match a.proxy_bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("xenvt-proxy"),
    };
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("xvnc.sock");
    let (xvnc, display) = start_xvnc(&sock)?;
    let xvnc_pid = xvnc.0.id();
    // The changing desktop: the root window redrawn with a new plaid, over and over.
    let disp = format!(":{display}");
    let changer = tokio::spawn(async move {
        for i in 0u32.. {
            let fg = format!("#{:06x}", (i.wrapping_mul(0x3a5f17)) & 0xffffff);
            let m = 2 + (i % 7);
            let _ = tokio::process::Command::new("xsetroot")
                .args(["-display", &disp, "-mod", &m.to_string(), "3", "-fg", &fg])
                .args(["-bg", "#203040"])
                .status()
                .await;
        }
    });

    // Direct first, with no proxy attached to Xvnc.
    let x0 = cpu_secs(xvnc_pid);
    let direct = measure(tokio::net::UnixStream::connect(&sock).await?, &list, secs).await?;
    let x1 = cpu_secs(xvnc_pid);

    let (proxy, addr) = start_proxy(&bin, dir.path(), &sock, &a.upstream, a.upstream_cu)?;
    let proxy_pid = proxy.0.id();
    // Wait for the proxy to have the desktop: its viewers are then 1920x1080.
    let mut up = false;
    for _ in 0..200 {
        let mut s = tokio::net::TcpStream::connect(&addr).await?;
        let (_, init) = client_handshake(&mut s, &ClientConfig::default()).await?;
        if (init.width, init.height) == (1920, 1080) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        bail!("the proxy never showed the desktop");
    }
    let (x1b, p1) = (cpu_secs(xvnc_pid), cpu_secs(proxy_pid));
    let via = measure(tokio::net::TcpStream::connect(&addr).await?, &list, secs).await?;
    let (x2, p2) = (cpu_secs(xvnc_pid), cpu_secs(proxy_pid));
    changer.abort();

    let fps = |p: &Phase| p.frames as f64 / p.secs;
    let bpf = |p: &Phase| p.bytes as f64 / (p.frames.max(1) as f64);
    println!(
        "direct: {} frames in {:.1}s ({:.1} fps), {:.0} bytes/frame, Xvnc {:.1} ms CPU/frame",
        direct.frames,
        direct.secs,
        fps(&direct),
        bpf(&direct),
        (x1 - x0) * 1e3 / direct.frames.max(1) as f64
    );
    println!(
        "proxy:  {} frames in {:.1}s ({:.1} fps), {:.0} bytes/frame, Xvnc {:.1} ms + proxy {:.1} ms CPU/frame",
        via.frames,
        via.secs,
        fps(&via),
        bpf(&via),
        (x2 - x1b) * 1e3 / via.frames.max(1) as f64,
        (p2 - p1) * 1e3 / via.frames.max(1) as f64,
    );
    ratio("fps_proxy_vs_direct", fps(&via) / fps(&direct).max(1e-9));
    ratio("bytes_proxy_vs_direct", bpf(&via) / bpf(&direct).max(1e-9));
    let xvnc_direct = (x1 - x0) / direct.frames.max(1) as f64;
    let proxy_via = (p2 - p1) / via.frames.max(1) as f64;
    ratio(
        "proxy_cpu_per_frame_vs_xvnc",
        proxy_via / xvnc_direct.max(1e-9),
    );
    drop(proxy);
    drop(xvnc);
    Ok(())
}
