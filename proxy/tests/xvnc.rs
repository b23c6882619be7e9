//! Interoperability with a real TigerVNC Xvnc on a private unix socket: our client
//! handshake, then the same desktop decoded from each encoding Xvnc offers must give the
//! same pixels. Skipped, with a message, when Xvnc is not installed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use xenvt_proxy::rfb::decode::{ClientDecoder, DecoderLimits, ServerEvent};
use xenvt_proxy::rfb::encoding::*;
use xenvt_proxy::rfb::handshake::{client_handshake, ClientConfig};
use xenvt_proxy::rfb::io::RfbReader;
use xenvt_proxy::rfb::{ClientMessage, PixelFormat, Rect};

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

struct Xvnc(Child);

impl Drop for Xvnc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Xvnc on a free display (it reports it on stdout via -displayfd, which also
/// means it is ready) and returns the display number.
fn start_xvnc(sock: &std::path::Path) -> (Xvnc, u32) {
    let mut child = Command::new("Xvnc")
        .args([
            "-displayfd",
            "1",
            "-rfbport",
            "-1",
            "-SecurityTypes",
            "None",
        ])
        .args(["-geometry", "200x120", "-depth", "24", "-nolisten", "tcp"])
        .arg("-rfbunixpath")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn Xvnc");
    let out = child.stdout.take().expect("stdout");
    let guard = Xvnc(child);
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("display number");
    let display = line.trim().parse().expect("display number from Xvnc");
    (guard, display)
}

async fn full_frame(
    sock: &std::path::Path,
    pf: PixelFormat,
    encodings: &[i32],
) -> (String, Vec<u32>, Vec<i32>) {
    let mut s = UnixStream::connect(sock).await.expect("connect");
    let (_, init) = client_handshake(&mut s, &ClientConfig::default())
        .await
        .expect("handshake");
    let mut msgs = Vec::new();
    ClientMessage::SetPixelFormat(pf).write(&mut msgs);
    ClientMessage::SetEncodings(encodings.to_vec()).write(&mut msgs);
    ClientMessage::FramebufferUpdateRequest {
        incremental: false,
        rect: Rect::new(0, 0, init.width, init.height),
    }
    .write(&mut msgs);
    s.write_all(&msgs).await.unwrap();
    let mut dec =
        ClientDecoder::new(pf, init.width, init.height, DecoderLimits::default()).unwrap();
    let mut rd = RfbReader::new(s, 64 << 20);
    let mut seen = Vec::new();
    loop {
        match rd.server_event(&mut dec).await.expect("decode") {
            ServerEvent::Rect { encoding, .. } => seen.push(encoding),
            ServerEvent::UpdateEnd => break,
            _ => {}
        }
    }
    (init.name, dec.framebuffer().pixels().to_vec(), seen)
}

#[tokio::test]
async fn decode_real_xvnc() {
    if !which("Xvnc") {
        if std::env::var_os("XENVT_REQUIRE_PEERS").is_some() {
            panic!(
                "Xvnc not installed (tigervnc-standalone-server), and XENVT_REQUIRE_PEERS is set"
            );
        }
        eprintln!("SKIPPED: Xvnc not installed (tigervnc-standalone-server)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rfb.sock");
    let (_xvnc, display) = start_xvnc(&sock);
    // A two-colour plaid over the root window gives every encoder something to do.
    let painted = which("xsetroot")
        && Command::new("xsetroot")
            .args(["-display", &format!(":{display}")])
            .args(["-mod", "5", "3", "-fg", "#ff8000", "-bg", "#0040c0"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !painted {
        eprintln!("note: xsetroot unavailable; comparing a plain root window");
    }
    for pf in [PixelFormat::rgb888(), PixelFormat::rgb565()] {
        let (name, raw, _) = full_frame(&sock, pf, &[RAW]).await;
        assert!(!name.is_empty());
        if painted {
            assert!(raw.contains(&0xff8000) || pf != PixelFormat::rgb888());
            let distinct: std::collections::HashSet<_> = raw.iter().collect();
            assert_eq!(distinct.len(), 2, "plaid has two colours");
        }
        for enc in [HEXTILE, RRE, ZRLE, TIGHT] {
            let (_, px, seen) = full_frame(&sock, pf, &[enc]).await;
            assert!(seen.contains(&enc), "Xvnc did not use {enc}: {seen:?}");
            assert_eq!(px, raw, "encoding {enc} with {pf:?} differs from Raw");
        }
    }
}
