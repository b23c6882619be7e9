//! `xenvt chan` between processes of the simulated host: what the real-Xen lab's
//! liveness scenario checks, kept here where it runs on every build.

use std::path::Path;
use std::time::Duration;

use common::chan_pair;
use xenvt::harness::SimHost;
use xenvt::sim::control::{DomainRef, Reply, Request};

mod common;

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
    let d0_args = [
        "--watch-domain",
        "--recv",
        HUGE,
        "--recv-seed",
        "1",
        "--progress",
        "100000",
    ];
    let mut ch = chan_pair(&host, &dom, "w", HUGE, &d0_args).await;
    let p = ch.d0_lines.next_line().await.unwrap().unwrap_or_default();
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
    let out = tokio::time::timeout(PROMPT, ch.d0.wait_with_output())
        .await
        .expect("dom0's end hung after its peer's domain went away")
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("domain {} went away after ", dom.id)),
        "{err}"
    );
    ch.guest.start_kill().unwrap();
    let _ = ch.guest.wait().await;
    host.wait_clean(10_000).await.unwrap();
    host.stop().await.unwrap();
}
