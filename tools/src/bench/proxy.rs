//! `xenvt bench proxy`: a viewer straight on a real Xvnc against the same viewer through
//! xenvt-proxy, on a changing 1920x1080 desktop, plus the proxy's encoder speed.
//!
//! Ratios: `fps_proxy_vs_direct` (goal >= 0.95), `bytes_proxy_vs_direct` (bytes per
//! frame, goal <= 1.05) and `proxy_cpu_per_frame_vs_xvnc` (the proxy's CPU time per frame
//! over Xvnc's when serving the viewer directly).
//!
//! The machine is shared, so the measurement is built to be fair under a changing load:
//! the same viewer code and settings both ways, one Xvnc, short direct and proxy phases
//! alternated in rounds (the order flips each round), a warm-up before each count, a fresh
//! proxy for each proxy phase (so Xvnc serves the direct viewer alone in direct phases),
//! the fps and CPU ratios the medians of the rounds' ratios, and the bytes ratio over the
//! frames of all rounds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use xenvt_proxy::metrics::Counting;
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
    /// Seconds per measured phase (default 2). Short phases, alternated, follow the
    /// load of a shared machine better than long ones.
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
    /// Rounds of (direct, proxy) phases; the ratios are the medians over rounds
    /// (default 9; 1 with --quick).
    #[arg(long)]
    rounds: Option<u32>,
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
    /// Pixels of all counted rectangles: shows whether updates carry whole screens.
    pub(crate) pixels: u64,
    pub(crate) secs: f64,
}

/// Viewing before a phase's count starts: the first frames after connecting carry the
/// whole screen, and the pipeline (and, through the proxy, its upstream) fills up.
const WARM_UP: Duration = Duration::from_millis(500);

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
    let mut rd = RfbReader::new(Counting::new(rd, n.clone()), 80 << 20);
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
    // The first (whole) frame and a short warm-up are not counted.
    let mut counting = false;
    let warm_until = Instant::now() + WARM_UP;
    let (mut frames, mut start, mut base, mut pixels) = (0u64, Instant::now(), 0u64, 0u64);
    loop {
        let mut rects = 0;
        loop {
            match rd.server_event(&mut dec).await? {
                ServerEvent::Rect { rect, .. } => {
                    rects += 1;
                    if counting {
                        pixels += rect.area() as u64;
                    }
                }
                ServerEvent::UpdateEnd => break,
                _ => {}
            }
        }
        if !counting && Instant::now() >= warm_until {
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
                pixels,
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

/// The 1-minute load average, to say how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One measured phase and the CPU time the processes involved used during it.
struct Measured {
    phase: Phase,
    xvnc_cpu: f64,
    proxy_cpu: f64,
}

impl Measured {
    fn fps(&self) -> f64 {
        self.phase.frames as f64 / self.phase.secs
    }
    fn bytes_per_frame(&self) -> f64 {
        self.phase.bytes as f64 / self.phase.frames.max(1) as f64
    }
    /// How much of a 1920x1080 screen an update carries, on average.
    fn screens_per_frame(&self) -> f64 {
        self.phase.pixels as f64 / (1920.0 * 1080.0) / self.phase.frames.max(1) as f64
    }
    fn ms_per_frame(&self, cpu: f64) -> f64 {
        cpu * 1e3 / self.phase.frames.max(1) as f64
    }
}

async fn direct_phase(
    sock: &Path,
    xvnc_pid: u32,
    list: &[i32],
    secs: f64,
) -> anyhow::Result<Measured> {
    let s = tokio::net::UnixStream::connect(sock).await?;
    let x0 = cpu_secs(xvnc_pid);
    let phase = measure(s, list, secs).await?;
    Ok(Measured {
        phase,
        xvnc_cpu: cpu_secs(xvnc_pid) - x0,
        proxy_cpu: 0.0,
    })
}

/// A fresh proxy for each proxy phase, so that in the direct phases Xvnc serves the
/// direct viewer alone.
async fn proxy_phase(
    a: &ProxyArgs,
    bin: &Path,
    dir: &Path,
    sock: &Path,
    xvnc_pid: u32,
    list: &[i32],
    secs: f64,
) -> anyhow::Result<Measured> {
    let (proxy, addr) = start_proxy(bin, dir, sock, &a.upstream, a.upstream_cu)?;
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
    let s = tokio::net::TcpStream::connect(&addr).await?;
    // As real viewers do: small requests must not wait for an acknowledgement.
    s.set_nodelay(true)?;
    let (x0, p0) = (cpu_secs(xvnc_pid), cpu_secs(proxy_pid));
    let phase = measure(s, list, secs).await?;
    let m = Measured {
        phase,
        xvnc_cpu: cpu_secs(xvnc_pid) - x0,
        proxy_cpu: cpu_secs(proxy_pid) - p0,
    };
    drop(proxy);
    Ok(m)
}

/// Runs the benchmark.
pub async fn run(a: ProxyArgs) -> anyhow::Result<()> {
    let secs = a.secs.unwrap_or(2.0);
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 9 }).max(1);
    let list = encoding_of(&a.encoding)?;
    println!("load average at start: {}", load_average());
    encoder_rates(if a.quick { 3 } else { 10 })?;
    let bin = match &a.proxy_bin {
        Some(b) => b.clone(),
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
                .stderr(Stdio::null())
                .status()
                .await;
        }
    });

    let (mut fps_r, mut cpu_r) = (Vec::new(), Vec::new());
    // Bytes per frame depend on which frames a phase happens to see (the plaid's period
    // changes every frame), not on the load: they are summed over all rounds.
    let (mut bytes_d, mut bytes_p) = ((0u64, 0u64), (0u64, 0u64));
    let (mut fps_d, mut fps_p) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate the order so that a drift in the machine's load favours neither.
        let (direct, via) = if round % 2 == 0 {
            let d = direct_phase(&sock, xvnc_pid, &list, secs).await?;
            let v = proxy_phase(&a, &bin, dir.path(), &sock, xvnc_pid, &list, secs).await?;
            (d, v)
        } else {
            let v = proxy_phase(&a, &bin, dir.path(), &sock, xvnc_pid, &list, secs).await?;
            let d = direct_phase(&sock, xvnc_pid, &list, secs).await?;
            (d, v)
        };
        println!(
            "round {round} direct: {} frames in {:.1}s ({:.1} fps), {:.0} bytes/frame, \
             {:.2} screens/frame, Xvnc {:.1} ms CPU/frame",
            direct.phase.frames,
            direct.phase.secs,
            direct.fps(),
            direct.bytes_per_frame(),
            direct.screens_per_frame(),
            direct.ms_per_frame(direct.xvnc_cpu),
        );
        println!(
            "round {round} proxy:  {} frames in {:.1}s ({:.1} fps), {:.0} bytes/frame, \
             {:.2} screens/frame, Xvnc {:.1} ms + proxy {:.1} ms CPU/frame",
            via.phase.frames,
            via.phase.secs,
            via.fps(),
            via.bytes_per_frame(),
            via.screens_per_frame(),
            via.ms_per_frame(via.xvnc_cpu),
            via.ms_per_frame(via.proxy_cpu),
        );
        fps_d.push(direct.fps());
        fps_p.push(via.fps());
        fps_r.push(via.fps() / direct.fps().max(1e-9));
        for (m, t) in [(&direct, &mut bytes_d), (&via, &mut bytes_p)] {
            t.0 += m.phase.bytes;
            t.1 += m.phase.frames;
        }
        cpu_r
            .push(via.ms_per_frame(via.proxy_cpu) / direct.ms_per_frame(direct.xvnc_cpu).max(1e-9));
    }
    changer.abort();
    println!(
        "median fps: direct {:.1}, proxy {:.1}",
        median(&mut fps_d),
        median(&mut fps_p)
    );
    println!("load average at end: {}", load_average());
    ratio("fps_proxy_vs_direct", median(&mut fps_r));
    let per_frame = |(b, f): (u64, u64)| b as f64 / f.max(1) as f64;
    println!(
        "bytes per frame over all rounds: direct {:.0}, proxy {:.0}",
        per_frame(bytes_d),
        per_frame(bytes_p)
    );
    ratio(
        "bytes_proxy_vs_direct",
        per_frame(bytes_p) / per_frame(bytes_d).max(1e-9),
    );
    ratio("proxy_cpu_per_frame_vs_xvnc", median(&mut cpu_r));
    drop(xvnc);
    Ok(())
}
