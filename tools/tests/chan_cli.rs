//! `xenvt chan` between processes of the simulated host: what the real-Xen lab's
//! liveness scenario checks, kept here where it runs on every build.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use xenvt::harness::SimHost;
use xenvt::sim::control::{DomainRef, Reply, Request};

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xenvt"))
}

/// Upper bound for things that should happen at once; only a failure waits this long.
const PROMPT: Duration = Duration::from_secs(10);

const HUGE: &str = "1099511627776";

/// A destroyed domain runs no unmap-notify. With `--watch-domain` dom0's end
/// notices through `@releaseDomain` instead, stops with an error naming the
/// domain, and exits (which unmaps).
#[tokio::test]
async fn watch_domain_stops_the_connecting_end_when_the_domain_goes() {
    let host = SimHost::start(exe(), &[]).await.unwrap();
    let dom = host.create("doomed").await.unwrap();
    let dom0 = host.dom0().await.unwrap();
    let mut guest = host.xenvt_in(&dom);
    guest
        .args([
            "chan", "serve", "--path", "data/w", "--peer", "0", "--order", "12",
        ])
        .args(["--send", HUGE, "--recv", "0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    let mut guest = guest.spawn().unwrap();
    let mut glines = BufReader::new(guest.stdout.take().unwrap()).lines();
    assert_eq!(glines.next_line().await.unwrap().as_deref(), Some("ready"));

    let path = format!("/local/domain/{}/data/w", dom.id);
    let mut d0 = host.xenvt_in(&dom0);
    d0.args([
        "chan",
        "connect",
        "--path",
        &path,
        "--peer",
        &dom.id.to_string(),
    ])
    .args(["--watch-domain", "--recv", HUGE, "--recv-seed", "1"])
    .args(["--progress", "100000"])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut d0 = d0.spawn().unwrap();
    let mut dlines = BufReader::new(d0.stdout.take().unwrap()).lines();
    assert_eq!(
        dlines.next_line().await.unwrap().as_deref(),
        Some("connected")
    );
    let p = dlines.next_line().await.unwrap().unwrap_or_default();
    assert!(p.starts_with("progress "), "{p}");

    // Keep the guest's process: its live byte stays set, so only the watch can tell.
    let reply = host
        .client()
        .await
        .unwrap()
        .call(&Request::Destroy {
            domain: DomainRef::Id(dom.id),
            keep_processes: true,
        })
        .await
        .unwrap();
    assert!(matches!(reply, Reply::Ok), "{reply:?}");
    let out = tokio::time::timeout(PROMPT, d0.wait_with_output())
        .await
        .expect("dom0's end hung after its peer's domain went away")
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("domain {} went away after ", dom.id)),
        "{err}"
    );
    guest.start_kill().unwrap();
    let _ = guest.wait().await;
    host.wait_clean(10_000).await.unwrap();
    host.stop().await.unwrap();
}
