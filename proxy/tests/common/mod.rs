//! Shared helpers for the multi-process proxy tests: the real daemon, a real Xvnc, and
//! a scripted RFB viewer built on the crate's own client side.

#![allow(dead_code)]

pub mod guest;
pub mod image;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use xenvt_proxy::rfb::decode::{ClientDecoder, DecoderLimits, ServerEvent};
use xenvt_proxy::rfb::encoding::*;
use xenvt_proxy::rfb::handshake::{client_handshake, ClientConfig};
use xenvt_proxy::rfb::io::RfbReader;
use xenvt_proxy::rfb::{ClientMessage, PixelFormat, Rect};

/// The longest any single expected event may take; a guard against hangs, not a clock.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// True when every tool is installed. Otherwise the test is skipped with a note on
/// stderr, unless `XENVT_REQUIRE_PEERS` is set (the test scripts set it, after
/// installing every peer): then a missing tool fails the test.
pub fn have(tools: &[&str]) -> bool {
    for t in tools {
        if !which(t) {
            missing(&format!("{t} is not installed"));
            return false;
        }
    }
    true
}

/// Reports a missing real peer: a skip, or a failure under `XENVT_REQUIRE_PEERS`.
pub fn missing(what: &str) {
    if std::env::var_os("XENVT_REQUIRE_PEERS").is_some() {
        panic!("{what}, and XENVT_REQUIRE_PEERS is set");
    }
    eprintln!("SKIPPED: {what}");
}

/// The running daemon; stopped with SIGTERM on drop.
pub struct Proxy {
    pub child: Child,
    pub viewers: Vec<(u16, String)>,
    pub reverse: Option<String>,
    pub backend: Option<PathBuf>,
    /// Other ready lines (`web addr=...`).
    pub extra: Vec<String>,
    /// Lines printed after `ready` (domains found later: `viewers domain=N ...`).
    pub later: std::sync::mpsc::Receiver<String>,
}

impl Proxy {
    /// Starts the daemon with `config` written into `dir` and waits for its ready line.
    pub fn start(dir: &Path, config: &str) -> Proxy {
        Proxy::start_env(dir, config, &[])
    }

    /// [`Proxy::start`] with extra environment (`XENSTORED_PATH`, say).
    pub fn start_env(dir: &Path, config: &str, env: &[(&str, &Path)]) -> Proxy {
        let cfg = dir.join("proxy.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_xenvt-proxy"))
            .arg("--config")
            .arg(&cfg)
            .env("XENVT_LOG", "xenvt_proxy=info")
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn xenvt-proxy");
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, later) = std::sync::mpsc::channel();
        let mut p = Proxy {
            child,
            viewers: Vec::new(),
            reverse: None,
            backend: None,
            extra: Vec::new(),
            later,
        };
        let mut lines = out.lines();
        for line in lines.by_ref() {
            let line = line.expect("proxy stdout");
            let Some(rest) = line.strip_prefix("xenvt-proxy: ") else {
                continue;
            };
            let kv = |k: &str| {
                rest.split(' ')
                    .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
            };
            if rest == "ready" {
                // Keep reading: later lines go to `later`, and the daemon never
                // writes into a closed pipe.
                std::thread::spawn(move || {
                    for l in lines.map_while(Result::ok) {
                        if let Some(rest) = l.strip_prefix("xenvt-proxy: ") {
                            let _ = tx.send(rest.to_owned());
                        }
                    }
                });
                return p;
            } else if rest.starts_with("viewers ") {
                p.viewers
                    .push((kv("domain").unwrap().parse().unwrap(), kv("addr").unwrap()));
            } else if rest.starts_with("reverse ") {
                p.reverse = kv("addr");
            } else if rest.starts_with("backend ") {
                p.backend = kv("path").map(PathBuf::from);
            } else {
                p.extra.push(rest.to_owned());
            }
        }
        panic!("xenvt-proxy exited before it was ready");
    }

    pub fn viewer_addr(&self, domid: u16) -> String {
        self.viewers
            .iter()
            .find(|v| v.0 == domid)
            .map(|v| v.1.clone())
            .expect("domain listener")
    }

    /// The viewer address of `domid`, waiting for the daemon to announce it if it
    /// has not yet (a domain that appears after startup).
    pub fn wait_viewers(&mut self, domid: u16) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(v) = self.viewers.iter().rev().find(|v| v.0 == domid) {
                return v.1.clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .later
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no viewer port for domain {domid}"));
            if let Some(rest) = line.strip_prefix("viewers ") {
                let kv = |k: &str| {
                    rest.split(' ')
                        .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
                };
                if let (Some(d), Some(a)) = (kv("domain"), kv("addr")) {
                    self.viewers.push((d.parse().unwrap(), a));
                }
            }
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

/// A real Xvnc on a private unix socket (no TCP listener); killed on drop.
pub struct Xvnc {
    pub child: Child,
    pub display: u32,
    pub sock: PathBuf,
}

impl Xvnc {
    pub fn start(dir: &Path, geometry: &str) -> Xvnc {
        let sock = dir.join("xvnc.sock");
        let mut child = Command::new("Xvnc")
            .args([
                "-displayfd",
                "1",
                "-rfbport",
                "-1",
                "-SecurityTypes",
                "None",
            ])
            .args(["-geometry", geometry, "-depth", "24", "-nolisten", "tcp"])
            .args(["-desktop", "xtest"])
            .arg("-rfbunixpath")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn Xvnc");
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).unwrap();
        let display = line.trim().parse().expect("display number from Xvnc");
        Xvnc {
            child,
            display,
            sock,
        }
    }

    pub fn display(&self) -> String {
        format!(":{}", self.display)
    }

    /// Runs an X client to completion against this display.
    pub fn run(&self, prog: &str, args: &[&str]) {
        let st = Command::new(prog)
            .args(["-display", &self.display()])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{prog}: {e}"));
        assert!(st.success(), "{prog} {args:?} failed");
    }

    pub fn solid(&self, colour: &str) {
        self.run("xsetroot", &["-solid", colour]);
    }

    /// Makes Xvnc reverse-connect to `addr` (vncconfig -connect).
    pub fn connect_to(&self, addr: &str) {
        self.run("vncconfig", &["-connect", addr]);
    }
}

impl Drop for Xvnc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one framebuffer update carried.
#[derive(Debug, Default)]
pub struct Update {
    pub size: Option<(u16, u16)>,
    pub name: Option<String>,
    pub rects: usize,
}

/// A scripted viewer decoding into its own framebuffer.
pub struct TestViewer {
    pub rd: RfbReader<OwnedReadHalf>,
    pub wr: OwnedWriteHalf,
    pub dec: ClientDecoder,
    pub name: String,
    /// The last requests and events, for the message when an update never comes.
    pub trace: std::collections::VecDeque<String>,
}

impl TestViewer {
    pub async fn connect(addr: &str, encodings: &[i32], password: Option<&[u8]>) -> TestViewer {
        let mut s = TcpStream::connect(addr).await.expect("connect to proxy");
        // As real viewers do: small messages (keys) go at once, not after an ACK.
        s.set_nodelay(true).unwrap();
        let cfg = ClientConfig {
            password: password.map(<[u8]>::to_vec),
            ..ClientConfig::default()
        };
        let (_, init) = client_handshake(&mut s, &cfg).await.expect("handshake");
        let pf = PixelFormat::rgb888();
        let dec =
            ClientDecoder::new(pf, init.width, init.height, DecoderLimits::default()).unwrap();
        let (rd, mut wr) = s.into_split();
        let mut m = Vec::new();
        ClientMessage::SetPixelFormat(pf).write(&mut m);
        ClientMessage::SetEncodings(encodings.to_vec()).write(&mut m);
        wr.write_all(&m).await.unwrap();
        TestViewer {
            rd: RfbReader::new(rd, 64 << 20),
            wr,
            dec,
            name: init.name,
            trace: Default::default(),
        }
    }

    pub async fn send(&mut self, m: ClientMessage) {
        self.wr.write_all(&m.to_bytes()).await.unwrap();
    }

    fn note(&mut self, what: String) {
        if self.trace.len() == 48 {
            self.trace.pop_front();
        }
        self.trace.push_back(what);
    }

    pub async fn request(&mut self, incremental: bool) {
        self.note(format!("request incremental={incremental}"));
        let fb = self.dec.framebuffer().rect();
        self.send(ClientMessage::FramebufferUpdateRequest {
            incremental,
            rect: fb,
        })
        .await;
    }

    /// Reads one whole framebuffer update (other messages are skipped).
    pub async fn update(&mut self) -> Update {
        let mut u = Update::default();
        let mut started = false;
        loop {
            let ev = match tokio::time::timeout(PATIENCE, self.rd.server_event(&mut self.dec)).await
            {
                Ok(e) => e.expect("decode"),
                Err(_) => panic!(
                    "no update in time: size {:?}, name {:?}, {} rects so far; \
                     the last requests and events: {:?}",
                    self.size(),
                    self.name,
                    u.rects,
                    self.trace
                ),
            };
            self.note(match &ev {
                ServerEvent::Rect { .. } => "rect".to_owned(),
                e => format!("{e:?}").chars().take(48).collect(),
            });
            match ev {
                ServerEvent::UpdateBegin { .. } => started = true,
                ServerEvent::Rect { .. } => u.rects += 1,
                ServerEvent::DesktopSize { width, height }
                | ServerEvent::ExtendedDesktopSize {
                    status: 0,
                    width,
                    height,
                    ..
                } => u.size = Some((width, height)),
                ServerEvent::DesktopName(n) => {
                    self.name = n.clone();
                    u.name = Some(n);
                }
                ServerEvent::UpdateEnd if started => return u,
                _ => {}
            }
        }
    }

    /// Requests and reads updates until `pred` holds; panics after [`PATIENCE`].
    pub async fn until(&mut self, what: &str, mut pred: impl FnMut(&TestViewer) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        self.request(false).await;
        loop {
            let _ = self.update().await;
            if pred(self) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gave up waiting for {what}; name {:?}, size {}x{}",
                self.name,
                self.size().0,
                self.size().1
            );
            self.request(true).await;
        }
    }

    pub fn size(&self) -> (u16, u16) {
        let fb = self.dec.framebuffer();
        (fb.width(), fb.height())
    }

    pub fn pixels(&self) -> &[u32] {
        self.dec.framebuffer().pixels()
    }

    /// Every pixel is `rgb`.
    pub fn all(&self, rgb: u32) -> bool {
        self.pixels().iter().all(|&p| p == rgb)
    }
}

/// What a modern viewer asks for.
pub const MODERN: &[i32] = &[
    ZRLE,
    HEXTILE,
    RAW,
    COPY_RECT,
    DESKTOP_SIZE,
    EXTENDED_DESKTOP_SIZE,
    DESKTOP_NAME,
    LAST_RECT,
    CURSOR,
];

pub fn rect(w: u16, h: u16) -> Rect {
    Rect::new(0, 0, w, h)
}

/// The console view's size with the default 80x25 grid of 8x16 cells.
pub const CONSOLE_SIZE: (u16, u16) = (640, 400);

/// The viewer shows the console view.
pub fn is_console(v: &TestViewer) -> bool {
    v.size() == CONSOLE_SIZE && v.name.ends_with("\u{2014} console")
}
