//! The daemon as a process, with scripted peers only: startup checks, the console,
//! a hostile desktop, VncAuth, viewers without resize support and a clean SIGTERM.

mod common;

use std::process::Command;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xenvt_proxy::rfb::encoding::*;
use xenvt_proxy::rfb::handshake::{server_handshake, ServerConfig, ServerInit};
use xenvt_proxy::rfb::{ClientMessage, PixelFormat, Rect, UpdateWriter};

fn base_config(extra: &str) -> String {
    format!("[[domain]]\ndomid = 1\nname = \"vm1\"\nport = 0\n[reverse]\ndomid = 1\nlisten = \"127.0.0.1:0\"\n{extra}")
}

#[test]
fn open_listener_without_password_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(&cfg, "[viewer]\nlisten = \"0.0.0.0\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xenvt-proxy"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p.toml") && err.contains("not loopback"),
        "{err}"
    );
}

/// A desktop played by the test: handshake, one solid update, then whatever `tail` is.
async fn fake_desktop(addr: &str, w: u16, h: u16, rgb: u32, tail: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let init = ServerInit {
        width: w,
        height: h,
        pixel_format: PixelFormat::rgb888(),
        name: "fake".into(),
    };
    server_handshake(&mut s, &ServerConfig::default(), &init)
        .await
        .unwrap();
    // SetPixelFormat (20 bytes), then SetEncodings (4 + 4n), then a request (10).
    let mut hdr = [0u8; 24];
    s.read_exact(&mut hdr).await.unwrap();
    let n = u16::from_be_bytes([hdr[22], hdr[23]]) as usize;
    let mut rest = vec![0u8; 4 * n + 10];
    s.read_exact(&mut rest).await.unwrap();
    assert_eq!(rest[4 * n], 3, "then a FramebufferUpdateRequest");
    let mut out = Vec::new();
    let mut upd = UpdateWriter::begin(&mut out);
    upd.rect_header(&mut out, &Rect::new(0, 0, w, h), RAW);
    for _ in 0..usize::from(w) * usize::from(h) {
        out.extend_from_slice(&rgb.to_le_bytes());
    }
    upd.finish(&mut out);
    out.extend_from_slice(tail);
    s.write_all(&out).await.unwrap();
    s
}

#[tokio::test]
async fn placeholder_desktop_and_a_bad_desktop() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(dir.path(), &base_config(""));
    let mut v = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    assert_eq!(v.name, "vm1 \u{2014} console");
    assert_eq!(v.size(), CONSOLE_SIZE);
    v.until("the console", is_console).await;

    // A desktop arrives: the viewer is resized to it and sees its pixels and name.
    let rev = p.reverse.clone().unwrap();
    let good = fake_desktop(&rev, 64, 48, 0x00ff00, &[]).await;
    v.until("the desktop", |v| v.size() == (64, 48) && v.all(0x00ff00))
        .await;
    assert_eq!(v.name, "vm1 \u{2014} desktop (fake)");
    drop(good);
    v.until("the console again", is_console).await;

    // A desktop that sends garbage after a good frame is dropped; the viewer stays.
    let bad = fake_desktop(&rev, 32, 32, 0xff0000, &[77, 1, 2, 3]).await;
    v.until("the bad desktop's frame, then the console", |v| {
        is_console(v)
    })
    .await;
    drop(bad);
    // A desktop whose rectangle lies outside its own framebuffer, too.
    let mut outside = Vec::new();
    let mut upd = UpdateWriter::begin(&mut outside);
    upd.rect_header(&mut outside, &Rect::new(60, 0, 10, 1), RAW);
    outside.extend_from_slice(&[0; 40]);
    upd.finish(&mut outside);
    let _bad2 = fake_desktop(&rev, 64, 48, 0x0000ff, &outside).await;
    v.until("the console after an out-of-bounds rectangle", |v| {
        is_console(v)
    })
    .await;
    // The viewer's session survived all of it.
    v.request(false).await;
    let u = v.update().await;
    assert!(u.rects > 0);
}

#[tokio::test]
async fn viewer_without_resize_support_is_letterboxed() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(dir.path(), &base_config(""));
    let mut v = TestViewer::connect(&p.viewer_addr(1), &[RAW], None).await;
    let rev = p.reverse.clone().unwrap();
    let _d = fake_desktop(&rev, 64, 48, 0x123456, &[]).await;
    v.until("the desktop in the corner", |v| {
        v.dec.framebuffer().get(0, 0) == Some(0x123456)
    })
    .await;
    let fb = v.dec.framebuffer();
    assert_eq!(v.size(), CONSOLE_SIZE, "the viewer keeps its first size");
    assert_eq!(fb.get(63, 47), Some(0x123456));
    assert_eq!(fb.get(64, 0), Some(0), "black beyond the desktop");
    assert_eq!(fb.get(0, 48), Some(0));
    assert_eq!(fb.get(639, 399), Some(0));
}

#[tokio::test]
async fn vnc_auth_for_viewers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "sesame\n").unwrap();
    let p = Proxy::start(
        dir.path(),
        &base_config("[viewer]\nsecurity = \"vncauth\"\npassword_file = \"pw\"\n"),
    );
    let mut v = TestViewer::connect(&p.viewer_addr(1), MODERN, Some(b"sesame")).await;
    v.request(false).await;
    assert!(v.update().await.rects > 0);
    let mut s = TcpStream::connect(p.viewer_addr(1)).await.unwrap();
    let cfg = xenvt_proxy::rfb::handshake::ClientConfig {
        password: Some(b"wrong".to_vec()),
        ..Default::default()
    };
    assert!(xenvt_proxy::rfb::handshake::client_handshake(&mut s, &cfg)
        .await
        .is_err());
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proxy::start(
        dir.path(),
        &base_config("[upstream]\nbackend_socket = \"vnc.sock\"\n"),
    );
    let sock = p.backend.clone().unwrap();
    assert!(sock.exists());
    let _v = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    let st = p.stop();
    assert!(st.success(), "{st:?}");
    assert!(!sock.exists(), "socket file removed");
}

#[tokio::test]
async fn set_desktop_size_is_answered_and_fences_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proxy::start(dir.path(), &base_config(""));
    let mut list = MODERN.to_vec();
    list.push(FENCE);
    let mut v = TestViewer::connect(&p.viewer_addr(1), &list, None).await;
    v.send(ClientMessage::SetDesktopSize {
        width: 100,
        height: 100,
        screens: vec![],
    })
    .await;
    // The reply is an ExtendedDesktopSize with reason 1 (this client) and status 1.
    let mut saw_reply = false;
    for _ in 0..4 {
        let ev = v.rd.server_event(&mut v.dec).await.unwrap();
        if let xenvt_proxy::rfb::ServerEvent::ExtendedDesktopSize { reason, status, .. } = ev {
            assert_eq!((reason, status), (1, 1));
            saw_reply = true;
            break;
        }
    }
    assert!(saw_reply);
    assert_eq!(v.size(), CONSOLE_SIZE);
    v.send(ClientMessage::Fence {
        flags: (1 << 31) | 1,
        payload: vec![9, 8, 7],
    })
    .await;
    loop {
        let ev = v.rd.server_event(&mut v.dec).await.unwrap();
        if let xenvt_proxy::rfb::ServerEvent::Fence { flags, payload } = ev {
            assert_eq!((flags, payload), (1, vec![9, 8, 7]));
            break;
        }
    }
}
