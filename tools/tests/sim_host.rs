//! The simulated host as a whole, driven through the real `xenvt` binary: domain
//! life cycle, process membership, channel transfers between processes in
//! different domains, death of a peer, and a clean exit.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::chan_pair;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use xenvt::harness::SimHost;
use xenvt::sim::control::{DomainInfo, DomainRef, Reply, Request};

mod common;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xenvt"))
}

/// Upper bound for things that should happen at once; only a failure waits this long.
const PROMPT: Duration = Duration::from_secs(10);

async fn xenvt(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(exe())
        .arg("sim")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .await
        .unwrap()
}

/// Starts `xenstore-watch PATH` in `dom` and waits for the event that fires
/// at registration (so the watch, and the connection, exist); returns it and
/// its further events.
async fn xenstore_watch(dom: &DomainInfo, path: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut w = Command::new("xenstore-watch")
        .arg(path)
        .envs(xenvt::harness::env_for(dom))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(w.stdout.take().unwrap()).lines();
    tokio::time::timeout(PROMPT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    (w, lines)
}

#[tokio::test]
async fn cli_creates_lists_and_destroys_domains() {
    let host = SimHost::start(exe(), &[]).await.unwrap();
    let dir = host.dir();
    let out = xenvt(&dir, &["create", "vm1"]).await;
    assert!(out.status.success(), "{out:?}");
    let id: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(id > 0);
    let dup = xenvt(&dir, &["create", "vm1"]).await;
    assert!(!dup.status.success(), "a second vm1 was created");
    let bad = xenvt(&dir, &["create", "../evil"]).await;
    assert!(!bad.status.success(), "a bad name was accepted");

    let list = String::from_utf8(xenvt(&dir, &["list"]).await.stdout).unwrap();
    assert!(list.contains("Domain-0") && list.contains("vm1"), "{list}");

    // A real xenstore client inside the guest sees its own domain path.
    let out = xenvt(&dir, &["exec", "vm1", "--", "xenstore-read", "name"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "vm1");

    assert!(xenvt(&dir, &["destroy", "vm1"]).await.status.success());
    let list = String::from_utf8(xenvt(&dir, &["list"]).await.stdout).unwrap();
    assert!(!list.contains("vm1"), "{list}");
    assert!(
        !dir.join(format!("dom{id}")).exists(),
        "sockets left behind"
    );
    host.stop().await.unwrap();
}

#[tokio::test]
async fn destroy_kills_the_domains_processes_and_fires_release_domain() {
    let host = SimHost::start(exe(), &[]).await.unwrap();
    let dom = host.create("doomed").await.unwrap();
    let dom0 = host.dom0().await.unwrap();

    // A guest process that holds a xenstore connection (so it is a member).
    let (mut guest, _glines) = xenstore_watch(&dom, "data").await;
    // dom0 watches @releaseDomain.
    let (_watcher, mut wlines) = xenstore_watch(&dom0, "@releaseDomain").await;

    let reply = host
        .client()
        .await
        .unwrap()
        .call(&Request::Destroy {
            domain: DomainRef::Name("doomed".into()),
            keep_processes: false,
        })
        .await
        .unwrap();
    assert!(matches!(reply, Reply::Ok));

    let ev = tokio::time::timeout(PROMPT, wlines.next_line())
        .await
        .expect("no @releaseDomain event")
        .unwrap();
    assert_eq!(ev.as_deref(), Some("@releaseDomain"));
    let status = tokio::time::timeout(PROMPT, guest.wait())
        .await
        .expect("guest process survived its domain")
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    host.stop().await.unwrap();
}

#[tokio::test]
async fn control_socket_survives_garbage() {
    let host = SimHost::start(exe(), &[]).await.unwrap();
    let mut raw = tokio::net::UnixStream::connect(host.dir().join("control.sock"))
        .await
        .unwrap();
    raw.write_all(b"{\"op\":\"no_such_op\"}\nnot json at all\n")
        .await
        .unwrap();
    let mut r = BufReader::new(raw);
    for _ in 0..2 {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.contains("error"), "{line}");
    }
    // A line longer than the limit closes that connection only.
    let mut raw = tokio::net::UnixStream::connect(host.dir().join("control.sock"))
        .await
        .unwrap();
    let big = vec![b'x'; xenvt::sim::control::MAX_LINE + 10];
    let _ = raw.write_all(&big).await;
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut sink).await;
    // The host still serves.
    host.create("still-here").await.unwrap();
    host.stop().await.unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_host_and_removes_its_sockets() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("host");
    let mut child = Command::new(exe())
        .args(["sim", "run", "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .starts_with("ready"));
    assert!(xenvt(&dir, &["create", "vm1"]).await.status.success());
    // A second host in the same directory is refused.
    let second = xenvt(&dir, &["run"]).await;
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already runs"));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(PROMPT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!dir.exists(), "host directory left behind");
}

/// Both ends of a channel in separate processes of separate domains, with the
/// serving guest reading until dom0 closes (exact end of stream).
#[tokio::test]
async fn channel_between_domains_is_exact_and_leaves_nothing_behind() {
    let out = Command::new(exe())
        .args([
            "smoke",
            "--bytes",
            &(8u64 << 20).to_string(),
            "--order",
            "12",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// kill -9 of the guest end mid-transfer: the kernel-like unmap-notify clears
/// its live byte and kicks dom0, whose end reports the early close promptly
/// instead of hanging.
#[tokio::test]
async fn peer_death_mid_transfer_is_seen_promptly() {
    let host = SimHost::start(exe(), &[]).await.unwrap();
    let dom = host.create("victim").await.unwrap();
    let huge = (1u64 << 40).to_string();
    let recv = ["--recv", &huge, "--recv-seed", "1"];
    let mut ch = chan_pair(&host, &dom, "x", &huge, &recv).await;
    ch.guest.start_kill().unwrap();
    let out = tokio::time::timeout(PROMPT, ch.d0.wait_with_output())
        .await
        .expect("dom0 end hung after its peer died")
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("peer closed after"), "{err}");
    host.wait_clean(10_000).await.unwrap();
    host.stop().await.unwrap();
}

/// Each guest has a console like a Xen guest's: a pty whose path is published in
/// `console/tty`, with the guest's shell behind it; the shell is a member of the
/// domain and dies with it.
#[tokio::test]
async fn guest_console_is_published_and_runs_a_shell_in_the_domain() {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;

    let host = SimHost::start(exe(), &[]).await.unwrap();
    let dom = host.create("withconsole").await.unwrap();
    let dom0 = host.dom0().await.unwrap();
    let path = format!("/local/domain/{}/console/tty", dom.id);
    let out = Command::new("xenstore-read")
        .arg(&path)
        .envs(xenvt::harness::env_for(&dom0))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tty = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(Some(Path::new(&tty)), dom.console.as_deref());
    // The guest may read its own console node.
    let out = Command::new("xenstore-read")
        .arg("console/tty")
        .envs(xenvt::harness::env_for(&dom))
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tty);

    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&tty)
        .unwrap();
    // The shell runs inside the domain: it sees the domain's xenstore.
    pty.write_all(b"xenstore-read name; echo $((6*7))\r")
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = pty.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            if text.contains("withconsole\r\n") && text.contains("42\r\n") {
                let _ = tx.send(text);
                return;
            }
        }
    });
    let text = tokio::task::spawn_blocking(move || rx.recv_timeout(PROMPT))
        .await
        .unwrap()
        .expect("the console shell did not answer");
    assert!(text.contains("42"), "{text}");
    host.stop().await.unwrap();
}
