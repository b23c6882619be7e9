//! A backend killed with -9 leaves its guests' socket directories behind; the
//! next one removes those nobody serves at start-up, and nothing else.

mod common;

use common::{Captured, LIMIT};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use xenvt_ring::config::Load;

use xenvt_backend::xs::Xs;
use xenvt_backend::{Backend, Config};
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::xenstore::{MemStore, Xenstore};

/// A socket file whose listener is gone, as after kill -9.
fn dead_socket(p: &std::path::Path) {
    drop(UnixListener::bind(p).unwrap());
    assert!(p.exists());
}

// A current-thread runtime: every task runs on this thread, under the
// thread-local subscriber set below.
#[tokio::test]
async fn start_up_removes_only_dead_guest_directories() {
    let logs = Captured::default();
    let _guard = logs.capture("info");

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    // Left by a killed backend: dead sockets only.
    std::fs::create_dir(run.join("gone")).unwrap();
    dead_socket(&run.join("gone/vnc.sock"));
    dead_socket(&run.join("gone/ssh.sock"));
    // Someone still listens there.
    std::fs::create_dir(run.join("live")).unwrap();
    let _live = UnixListener::bind(run.join("live/vnc.sock")).unwrap();
    dead_socket(&run.join("live/ssh.sock"));
    // Not our layout: other content beside a dead socket.
    std::fs::create_dir(run.join("foreign")).unwrap();
    dead_socket(&run.join("foreign/vnc.sock"));
    std::fs::write(run.join("foreign/notes.txt"), b"keep").unwrap();
    // Not a directory of ours: a link to one, and a plain file.
    std::fs::create_dir(dir.path().join("elsewhere")).unwrap();
    dead_socket(&dir.path().join("elsewhere/vnc.sock"));
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), run.join("link")).unwrap();
    std::fs::write(run.join("other.txt"), b"keep").unwrap();

    let cfg = Config::from_str_for(
        None,
        &format!("run_dir = {run:?}\n[services.svc]\nlisten = true\n"),
    )
    .unwrap();
    let xs = MemStore::new();
    xs.write("domid", "0").await.unwrap();
    xs.write("/local/domain/0/name", "Domain-0").await.unwrap();
    let host = HeapHost::new();
    let b = Backend::new(cfg, Arc::new(host.domain(0)), Xs::new(xs))
        .await
        .unwrap();
    // Shut down at once: the start-up work is done before the first wait.
    tokio::time::timeout(LIMIT, b.run(async {}))
        .await
        .unwrap()
        .unwrap();

    assert!(!run.join("gone").exists());
    assert!(run.join("live/vnc.sock").exists());
    assert!(run.join("live/ssh.sock").exists());
    assert!(run.join("foreign/vnc.sock").exists());
    assert!(run.join("foreign/notes.txt").exists());
    assert!(run.join("link").symlink_metadata().is_ok());
    assert!(dir.path().join("elsewhere/vnc.sock").exists());
    assert!(run.join("other.txt").exists());
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("removed stale socket directories"))
        .unwrap_or_else(|| panic!("no log line in:\n{text}"));
    assert!(line.contains("count=1") && line.contains("gone"), "{line}");
}
