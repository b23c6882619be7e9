//! The whole chain with real peers on a simulated host: a guest's Xvnc reverse-connects
//! to the agent, its desktop crosses the channel to the backend and is delivered to the
//! proxy, and a real viewer (vncdotool) sees through the proxy exactly what Xvnc has.
//!
//! Needs the daemons beside the `xenvt` binary (`cargo build -p xenvt-agent -p
//! xenvt-backend -p xenvt-proxy`), Xvnc, xsetroot, vncconfig, xterm
//! (tigervnc-standalone-server, x11-xserver-utils, xterm) and vncdotool (`XENVT_VNCDO`,
//! or `vncdo-venv/bin/vncdo` in the target directory). A missing tool skips the test,
//! unless `XENVT_REQUIRE_PEERS` is set.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, UnixStream};
use xenvt::demo::{png_size, vncdo, Chain, DesktopSpec, ProxyOptions, CONSOLE_SIZE};

const EXE: &str = env!("CARGO_BIN_EXE_xenvt");

/// Reports a missing real peer: a skip, or a failure under `XENVT_REQUIRE_PEERS`.
fn missing(what: &str) {
    if std::env::var_os("XENVT_REQUIRE_PEERS").is_some() {
        panic!("{what}, and XENVT_REQUIRE_PEERS is set");
    }
    eprintln!("SKIPPED: {what}");
}

/// The X tools and vncdotool, or `None` (after [`missing`]).
fn peers(x_tools: &[&str]) -> Option<PathBuf> {
    for t in x_tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            missing(&format!("{t} is not installed"));
            return None;
        }
    }
    let v = xenvt::demo::find_vncdo(Path::new(EXE)).filter(|p| p.is_file());
    if v.is_none() {
        missing("vncdotool not found (set XENVT_VNCDO)");
    }
    v
}

/// A TCP port in front of Xvnc's unix socket, so vncdotool can reach Xvnc directly.
async fn tcp_relay(sock: PathBuf) -> SocketAddr {
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
    addr
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Saves what a viewer of `addr` sees in `file` (vncdotool).
async fn capture(vncdo_exe: &Path, addr: SocketAddr, file: &Path) {
    vncdo(vncdo_exe, addr, &["capture", arg(file)])
        .await
        .unwrap();
}

/// Presses `key` in the viewer `addr` of domain `id`, then waits until the
/// domain shows `view`.
async fn switch(chain: &Chain, vncdo_exe: &Path, addr: SocketAddr, id: u16, key: &str, view: &str) {
    vncdo(vncdo_exe, addr, &["key", key]).await.unwrap();
    chain.wait_view(id, view).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_desktop_crosses_agent_channel_backend_and_proxy_pixel_for_pixel() {
    let Some(vncdo_exe) = peers(&["Xvnc", "xsetroot", "vncconfig"]) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let opts = ProxyOptions {
        port_base: 0,
        web: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        novnc_dir: None,
    };
    let mut chain = Chain::start(Path::new(EXE), &["vm1"], &opts)
        .await
        .expect("host, backend and proxy");
    let id = chain.guests[0].id;
    let viewer = chain.viewer(id).unwrap();
    chain.wait_view(id, "console").await.unwrap();

    let xsock = scratch.path().join("xvnc.sock");
    let spec = DesktopSpec {
        geometry: "400x300".into(),
        colour: "#3366cc".into(),
        xterm: false,
        unix_socket: Some(xsock.clone()),
        hook: false,
    };
    let d = chain.start_desktop(0, &spec).await.expect("desktop");
    let desk = chain.desktop(d).unwrap();
    // A pattern rather than a flat colour, so a shifted or partial frame shows.
    desk.run(
        "xsetroot",
        &["-mod", "5", "3", "-fg", "#ff8000", "-bg", "#3366cc"],
    )
    .await
    .unwrap();
    // Only this connection can bring the desktop: the agent has no hook here.
    desk.connect()
        .await
        .expect("vncconfig -connect to the agent");
    chain.wait_view(id, "desktop").await.unwrap();

    let direct = tcp_relay(xsock).await;
    let s = scratch.path();
    capture(&vncdo_exe, direct, &s.join("direct.bmp")).await;
    capture(&vncdo_exe, viewer, &s.join("proxied.bmp")).await;
    let a = std::fs::read(s.join("direct.bmp")).unwrap();
    let b = std::fs::read(s.join("proxied.bmp")).unwrap();
    assert!(a.len() > 400 * 300 * 3, "a whole frame was captured");
    assert!(
        a == b,
        "the frame through the chain differs from Xvnc's own"
    );

    // ctrl-alt-F1: the console, at the console's size.
    switch(&chain, &vncdo_exe, viewer, id, "ctrl-alt-f1", "console").await;
    capture(&vncdo_exe, viewer, &s.join("console.png")).await;
    assert_eq!(png_size(&s.join("console.png")).unwrap(), CONSOLE_SIZE);

    // ctrl-alt-F7: the desktop again, the same pixels.
    switch(&chain, &vncdo_exe, viewer, id, "ctrl-alt-f7", "desktop").await;
    capture(&vncdo_exe, viewer, &s.join("again.bmp")).await;
    assert!(
        std::fs::read(s.join("again.bmp")).unwrap() == a,
        "the desktop after ctrl-alt-F7 differs from Xvnc's own"
    );

    chain.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_check_switches_views_and_leaves_screenshots() {
    let Some(vncdo_exe) = peers(&["Xvnc", "xsetroot", "vncconfig", "xterm"]) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let shots = scratch.path().join("shots");
    let out = tokio::process::Command::new(EXE)
        .args(["demo", "--check", "--vncdo", arg(&vncdo_exe), "--out"])
        .arg(&shots)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), out)
        .await
        .expect("xenvt demo --check finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "xenvt demo --check failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let shots = shots.canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("screenshots: {}", shots.display())),
        "{stdout}"
    );
    for vm in ["vm1", "vm2"] {
        for (what, size) in [
            ("1-console", CONSOLE_SIZE),
            ("2-desktop", (1024, 768)),
            ("3-console-f1", CONSOLE_SIZE),
            ("4-desktop-f7", (1024, 768)),
        ] {
            let p = shots.join(format!("{vm}-{what}.png"));
            assert_eq!(png_size(&p).unwrap(), size, "{}", p.display());
        }
    }
    // The check stops everything: its temporary directories are gone.
    for l in stdout.lines() {
        if let Some(d) = l.strip_prefix("demo: logs in ") {
            let tmp = Path::new(d).parent().unwrap();
            assert!(!tmp.exists(), "{} left behind", tmp.display());
        }
        if let Some(rest) = l.strip_prefix("demo: host in ") {
            let host = Path::new(rest.split(',').next().unwrap());
            assert!(!host.exists(), "{} left behind", host.display());
        }
    }
}
