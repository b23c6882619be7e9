//! Web viewers: the status page and files over plain HTTP, and noVNC in headless Chromium
//! through the WebSocket endpoint (the console renders, typing works, a switch to the
//! desktop resizes the canvas).
//!
//! The browser test needs chromium, node, and `npm i playwright-core @novnc/novnc` in
//! `web-peers/` under the build directory (or `XENVT_WEB_PEERS`); Xvnc for the desktop.
//! With `XENVT_SCREENSHOTS` set to a directory, it leaves the page's screenshots there.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::guest::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn web_config(console: &GuestConsole, novnc: &Path, extra: &str) -> String {
    format!(
        "[[domain]]\ndomid = 1\nname = \"vm1\"\nport = 0\nconsole = \"pty:{}\"\n\
         [reverse]\ndomid = 1\nlisten = \"127.0.0.1:0\"\n[xenstore]\nenabled = false\n\
         [web]\nlisten = \"127.0.0.1:0\"\nnovnc_dir = \"{}\"\n{extra}",
        console.path.display(),
        novnc.display()
    )
}

fn web_addr(p: &Proxy) -> String {
    p.extra
        .iter()
        .find_map(|l| l.strip_prefix("web addr="))
        .expect("web listener")
        .to_owned()
}

async fn get(addr: &str, path: &str) -> (String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&all[..split]).into_owned(),
        all[split + 4..].to_vec(),
    )
}

#[tokio::test]
async fn status_page_files_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let novnc = dir.path().join("novnc");
    std::fs::create_dir_all(novnc.join("core")).unwrap();
    std::fs::write(novnc.join("core/rfb.js"), "export default class RFB {}\n").unwrap();
    let g = bare_console();
    let p = Proxy::start(dir.path(), &web_config(&g, &novnc, ""));
    let addr = web_addr(&p);
    let (h, body) = get(&addr, "/").await;
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains("vm1") && body.contains("view.html?domain=1"),
        "{body}"
    );
    let (h, body) = get(&addr, "/domains.json").await;
    assert!(h.contains("application/json"));
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[0]["domid"], 1);
    assert_eq!(list[0]["view"], "vm1 \u{2014} console");
    let (h, _) = get(&addr, "/novnc/core/rfb.js").await;
    assert!(h.contains("Content-Type: text/javascript"), "{h}");
    let (h, body) = get(&addr, "/view.html").await;
    assert!(h.starts_with("HTTP/1.1 200"));
    assert!(String::from_utf8(body).unwrap().contains("\"/websockify\""));
    for bad in [
        "/novnc/../proxy.toml",
        "/novnc/%2e%2e/proxy.toml",
        "/nothing",
    ] {
        let (h, _) = get(&addr, bad).await;
        assert!(h.starts_with("HTTP/1.1 404"), "{bad}: {h}");
    }
    let (h, _) = get(&addr, "/websockify/vm9").await;
    assert!(h.starts_with("HTTP/1.1 404"), "unknown domain: {h}");
    let (h, _) = get(&addr, "/websockify/vm1").await;
    assert!(h.starts_with("HTTP/1.1 426"), "not an upgrade: {h}");
}

#[test]
fn web_listener_off_loopback_needs_a_password() {
    let e = xenvt_proxy::config::Config::parse(
        "[web]\nlisten = \"0.0.0.0:6080\"\n",
        Path::new("proxy.toml"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("web.listen"), "{e}");
}

fn web_peers() -> Option<PathBuf> {
    let p = std::env::var_os("XENVT_WEB_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .join("web-peers")
        });
    let ok = p.join("node_modules/playwright-core").is_dir()
        && p.join("node_modules/@novnc/novnc/core/rfb.js").is_file();
    if ok {
        Some(p)
    } else {
        missing(&format!(
            "playwright-core and @novnc/novnc not installed in {} (set XENVT_WEB_PEERS)",
            p.display()
        ));
        None
    }
}

/// The browser, driven line by line (see `tests/web/driver.js`).
struct Browser {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Browser {
    fn start(peers: &Path, url: &str) -> Browser {
        let mut child = Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/driver.js"))
            .arg(url)
            .env("NODE_PATH", peers.join("node_modules"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let to = child.stdin.take().unwrap();
        let mut from = BufReader::new(child.stdout.take().unwrap());
        let mut l = String::new();
        from.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "connected", "noVNC did not connect");
        Browser { child, to, from }
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.to, "{cmd}").unwrap();
        let mut l = String::new();
        self.from.read_line(&mut l).unwrap();
        assert!(!l.is_empty(), "the browser driver ended");
        l.trim_end().to_owned()
    }

    /// The canvas as `0xRRGGBB` pixels.
    fn pixels(&mut self) -> (usize, usize, Vec<u32>) {
        use base64::Engine;
        let r = self.ask("pixels");
        let mut it = r.splitn(3, ' ');
        let w: usize = it.next().unwrap().parse().unwrap();
        let h: usize = it.next().unwrap().parse().unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(it.next().unwrap_or(""))
            .unwrap();
        let px = raw
            .chunks_exact(4)
            .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
            .collect();
        (w, h, px)
    }

    /// Polls the canvas until `pred` holds; panics after [`PATIENCE`].
    fn until(&mut self, what: &str, mut pred: impl FnMut(usize, usize, &[u32]) -> bool) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let (w, h, px) = self.pixels();
            if pred(w, h, &px) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting for {what}; canvas {w}x{h}"
            );
            // The browser answers each poll after a round trip; no sleep needed.
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.to, "quit");
        // A driver stuck after a failure must not hang the test: ours to end.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn novnc_in_chromium_types_on_the_console_and_follows_a_switch() {
    if !have(&["node", "chromium", "Xvnc", "xsetroot", "vncconfig", "sh"]) {
        return;
    }
    let Some(peers) = web_peers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let g = shell_console();
    let novnc = peers.join("node_modules/@novnc/novnc");
    let p = Proxy::start(
        dir.path(),
        &web_config(&g, &novnc, "[switch]\nmanual_hold_ms = 0\n"),
    );
    let url = format!("http://{}/view.html?domain=vm1", web_addr(&p));
    let shots = std::env::var_os("XENVT_SCREENSHOTS").map(PathBuf::from);
    let rev = p.reverse.clone().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut b = Browser::start(&peers, &url);
        b.until("the console prompt", |w, h, px| {
            (w, h) == (640, 400) && count_text(px, w, "$ ") >= 1
        });
        assert_eq!(b.ask("type echo hello from noVNC"), "ok");
        assert_eq!(b.ask("press Enter"), "ok");
        b.until("the typed line and its output", |w, _, px| {
            count_text(px, w, "hello from noVNC") >= 2
        });
        if let Some(d) = &shots {
            std::fs::create_dir_all(d).unwrap();
            assert_eq!(
                b.ask(&format!("shot {}", d.join("console-novnc.png").display())),
                "ok"
            );
        }
        let _keep = &g;
        let x = Xvnc::start(dir.path(), "480x300");
        x.run(
            "xsetroot",
            &["-mod", "8", "8", "-fg", "#3060a0", "-bg", "#e0e0e0"],
        );
        x.connect_to(&rev);
        b.until("the canvas resized to the desktop", |w, h, _| {
            (w, h) == (480, 300)
        });
        if let Some(d) = &shots {
            assert_eq!(
                b.ask(&format!("shot {}", d.join("desktop-novnc.png").display())),
                "ok"
            );
        }
        assert_eq!(b.ask("combo F1"), "ok");
        b.until("the console again", |w, h, px| {
            (w, h) == (640, 400) && count_text(px, w, "hello from noVNC") >= 2
        });
        assert_eq!(b.ask("combo F7"), "ok");
        b.until("the desktop again", |w, h, _| (w, h) == (480, 300));
        drop(x);
        b.until("the console after the desktop went", |w, h, _| {
            (w, h) == (640, 400)
        });
    })
    .await
    .unwrap();
}
