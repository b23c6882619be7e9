//! The daemon between a real TigerVNC Xvnc and real or scripted viewers.
//!
//! Needs Xvnc, xsetroot, vncconfig and xrandr (tigervnc-standalone-server,
//! x11-xserver-utils); the vncdotool test also needs xterm, xdotool and vncdotool in a
//! venv (`XENVT_VNCDO`, or `vncdo-venv/bin/vncdo` in the target directory). Each test
//! is skipped, with a note, when its tools are missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UnixStream};
use xenvt_proxy::rfb::encoding::*;
use xenvt_proxy::rfb::handshake::{client_handshake, ClientConfig};
use xenvt_proxy::rfb::{ClientMessage, PixelFormat};

const X_TOOLS: &[&str] = &["Xvnc", "xsetroot", "vncconfig", "xrandr"];

fn config(extra: &str) -> String {
    format!(
        "[[domain]]\ndomid = 1\nname = \"vm1\"\nport = 0\n\
         [reverse]\ndomid = 1\nlisten = \"127.0.0.1:0\"\n{extra}"
    )
}

#[tokio::test]
async fn reverse_desktop_name_resize_and_back_to_placeholder() {
    if !have(X_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(dir.path(), &config(""));
    let mut v = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    v.until("the console", is_console).await;

    let x = Xvnc::start(dir.path(), "320x240");
    x.solid("#ff8000");
    x.connect_to(p.reverse.as_deref().unwrap());
    v.until("the orange desktop", |v| {
        v.size() == (320, 240) && v.all(0xff8000)
    })
    .await;
    assert_eq!(v.name, "vm1 \u{2014} desktop (xtest)");

    // A second viewer at the same time, with another encoding, sees the same.
    let mut v2 = TestViewer::connect(&p.viewer_addr(1), &[HEXTILE, DESKTOP_SIZE], None).await;
    v2.until("the desktop in the second viewer", |v| v.all(0xff8000))
        .await;

    x.run("vncconfig", &["-set", "desktop=renamed"]);
    v.until("the new name", |v| v.name.ends_with("(renamed)"))
        .await;

    // xrandr in the guest: the viewers are resized, the session goes on.
    x.run("xrandr", &["-s", "640x480"]);
    x.solid("#0000ff");
    v.until("the resized blue desktop", |v| {
        v.size() == (640, 480) && v.all(0x0000ff)
    })
    .await;
    v2.until("the second viewer resized", |v| {
        v.size() == (640, 480) && v.all(0x0000ff)
    })
    .await;

    drop(x);
    v.until("the console again", is_console).await;
    assert_eq!(v.name, "vm1 \u{2014} console");
}

/// Plays the backend: opens Xvnc's unix socket and the proxy's backend socket, writes
/// the PROXY v2 header naming the guest, then splices the two.
async fn deliver(backend: &Path, xvnc: &Path, domid: u16, domain: &str, service: &str) {
    let mut up = UnixStream::connect(xvnc).await.unwrap();
    let mut down = UnixStream::connect(backend).await.unwrap();
    let hdr = xenvt_ring::proxyv2::encode(&xenvt_ring::proxyv2::Origin {
        domid,
        domain: domain.into(),
        service: service.into(),
    })
    .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut down, &hdr)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut up, &mut down).await;
    });
}

#[tokio::test]
async fn desktop_delivered_by_the_backend_with_a_proxy_header() {
    if !have(X_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(
        dir.path(),
        "[upstream]\nbackend_socket = \"vnc.sock\"\n[[domain]]\ndomid = 5\nport = 0\n",
    );
    let backend = p.backend.clone().unwrap();
    let mut v = TestViewer::connect(&p.viewer_addr(5), MODERN, None).await;
    let x = Xvnc::start(dir.path(), "200x100");
    x.solid("#00ff80");

    // A service other than vnc is refused: the proxy closes the connection.
    let mut wrong = UnixStream::connect(&backend).await.unwrap();
    let hdr = xenvt_ring::proxyv2::encode(&xenvt_ring::proxyv2::Origin {
        domid: 5,
        domain: "vm5".into(),
        service: "ssh".into(),
    })
    .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut wrong, &hdr)
        .await
        .unwrap();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(PATIENCE, wrong.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");

    deliver(&backend, &x.sock, 5, "vm5", "vnc").await;
    v.until("the delivered desktop", |v| {
        v.size() == (200, 100) && v.all(0x00ff80)
    })
    .await;
    assert_eq!(
        v.name, "vm5 \u{2014} desktop (xtest)",
        "the backend's name wins"
    );
}

#[tokio::test]
async fn a_viewer_that_stops_reading_does_not_hurt_the_other() {
    if !have(X_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(dir.path(), &config(""));
    let x = Xvnc::start(dir.path(), "640x480");
    x.solid("#101010");
    x.connect_to(p.reverse.as_deref().unwrap());
    let mut good = TestViewer::connect(&p.viewer_addr(1), &[RAW, DESKTOP_SIZE], None).await;
    good.until("the desktop", |v| v.size() == (640, 480) && v.all(0x101010))
        .await;

    // The stalled viewer asks for raw continuous updates of everything, then never
    // reads another byte.
    let mut stalled = tokio::net::TcpStream::connect(p.viewer_addr(1))
        .await
        .unwrap();
    let (_, init) = client_handshake(&mut stalled, &ClientConfig::default())
        .await
        .unwrap();
    let mut m = Vec::new();
    ClientMessage::SetPixelFormat(PixelFormat::rgb888()).write(&mut m);
    ClientMessage::SetEncodings(vec![RAW, CONTINUOUS_UPDATES]).write(&mut m);
    ClientMessage::EnableContinuousUpdates {
        enable: true,
        rect: rect(init.width, init.height),
    }
    .write(&mut m);
    for _ in 0..20 {
        ClientMessage::FramebufferUpdateRequest {
            incremental: false,
            rect: rect(init.width, init.height),
        }
        .write(&mut m);
    }
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &m)
        .await
        .unwrap();

    // Each change is a full 1.2 MB raw frame for the stalled viewer: its socket is
    // full after a few, while the good viewer keeps seeing every colour.
    for i in 0..12u32 {
        let c = 0x200000 + i * 0x000811;
        x.solid(&format!("#{c:06x}"));
        good.until(&format!("colour {c:06x}"), |v| v.all(c)).await;
    }
}

fn vncdo() -> Option<PathBuf> {
    let p = std::env::var_os("XENVT_VNCDO")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .join("vncdo-venv/bin/vncdo")
        });
    if p.is_file() {
        Some(p)
    } else {
        common::missing(&format!(
            "vncdotool not found at {} (set XENVT_VNCDO)",
            p.display()
        ));
        None
    }
}

async fn run_vncdo(vncdo: &Path, server: &str, args: &[&str]) {
    let st = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(vncdo)
            .args(["--nocursor", "-t", "25", "-s", server])
            .args(args)
            .stdin(Stdio::null())
            .status(),
    )
    .await
    .expect("vncdo in time")
    .expect("run vncdo");
    assert!(st.success(), "vncdo {args:?} failed");
}

/// A TCP port in front of Xvnc's unix socket, so vncdotool can reach Xvnc directly.
async fn tcp_relay(sock: PathBuf) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut t, _)) = l.accept().await {
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Ok(mut u) = UnixStream::connect(&sock).await {
                    let _ = tokio::io::copy_bidirectional(&mut t, &mut u).await;
                }
            });
        }
    });
    format!("127.0.0.1::{}", addr.port())
}

#[tokio::test]
async fn vncdotool_sees_the_same_pixels_and_types_into_the_desktop() {
    if !have(X_TOOLS) || !have(&["xterm", "xdotool"]) {
        return;
    }
    let Some(vncdo) = vncdo() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(dir.path(), &config(""));
    let x = Xvnc::start(dir.path(), "400x300");
    x.run(
        "xsetroot",
        &["-mod", "5", "3", "-fg", "#ff8000", "-bg", "#0040c0"],
    );
    x.connect_to(p.reverse.as_deref().unwrap());
    let mut v = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    v.until("the plaid", |v| {
        v.size() == (400, 300) && v.pixels().contains(&0xff8000) && v.pixels().contains(&0x0040c0)
    })
    .await;

    let direct = tcp_relay(x.sock.clone()).await;
    let proxied = format!(
        "127.0.0.1::{}",
        p.viewer_addr(1).rsplit(':').next().unwrap()
    );
    let a = dir.path().join("direct.bmp");
    let b = dir.path().join("proxied.bmp");
    run_vncdo(&vncdo, &direct, &["capture", a.to_str().unwrap()]).await;
    run_vncdo(&vncdo, &proxied, &["capture", b.to_str().unwrap()]).await;
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert!(a.len() > 400 * 300 * 3, "a whole frame was captured");
    assert!(a == b, "the proxy's frame differs from Xvnc's own");

    // Keys and pointer through the proxy reach an X client.
    let typed = dir.path().join("typed.txt");
    let mut xterm = tokio::process::Command::new("xterm")
        .args(["-display", &x.display(), "-geometry", "60x20+0+0"])
        .args(["-e", "sh", "-c", &format!("cat > '{}'", typed.display())])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("xterm");
    v.until("the xterm window", |v| {
        v.dec.framebuffer().get(20, 20) == Some(0xffffff)
    })
    .await;
    run_vncdo(
        &vncdo,
        &proxied,
        &["move", "37", "41", "type", "hello", "key", "enter"],
    )
    .await;
    let loc = std::process::Command::new("xdotool")
        .args(["getmouselocation", "--shell"])
        .env("DISPLAY", x.display())
        .output()
        .unwrap();
    let loc = String::from_utf8_lossy(&loc.stdout);
    assert!(loc.contains("X=37") && loc.contains("Y=41"), "{loc}");
    let mut got = String::new();
    for _ in 0..400 {
        got = std::fs::read_to_string(&typed).unwrap_or_default();
        if got.contains("hello\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, "hello\n");
    let _ = xterm.kill().await;
}
