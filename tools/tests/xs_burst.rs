//! The daemons' xenstore client (`XsClient`) under a burst of watch events
//! on the simulated xenstored. Like `xenstored_rs.rs` it holds one test,
//! because the client takes the socket path from `XENSTORED_PATH` only.

use futures::StreamExt;
use tokio::net::UnixListener;
use xenvt::sim::xenstored::{Xenstored, XenstoredConfig};
use xenvt_ring::xenstore::{Xenstore, XsClient, PENDING_MAX};

async fn connect(path: &std::path::Path) -> XsClient {
    std::env::set_var("XENSTORED_PATH", path);
    XsClient::connect().await.unwrap()
}

/// A consumer that leaves its watch unread while thousands of events
/// arrive neither stalls the client's other requests nor gets its
/// connection cut; it is told to re-list instead of getting every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_survives_a_watch_event_burst() {
    let dir = tempfile::tempdir().unwrap();
    // A tight per-connection bound: a client that stopped reading its
    // socket would be cut off well within the burst.
    let bound = 256 * 1024;
    let xsd = Xenstored::new(XenstoredConfig {
        out_queue_max: bound,
        ..XenstoredConfig::default()
    });
    xsd.introduce_domain(5, "guest").unwrap();
    let s0 = dir.path().join("dom0.sock");
    let l0 = UnixListener::bind(&s0).unwrap();
    let x = xsd.clone();
    tokio::spawn(async move { x.serve(l0, 0).await });

    let watcher = connect(&s0).await;
    let writer = connect(&s0).await;
    let mut w = watcher.watch("/local/domain").await.unwrap();
    assert_eq!(w.next().await.as_deref(), Some("/local/domain"));

    // Several times the bound in distinct events, none collected yet.
    let long = "c".repeat(200);
    let n = 3 * PENDING_MAX;
    assert!(n * long.len() > 2 * bound);
    for i in 0..n {
        writer
            .write(&format!("/local/domain/5/data/{i}{long}"), "")
            .await
            .unwrap();
    }
    // The same client still answers, and its connection is whole.
    assert_eq!(
        watcher
            .read("/local/domain/5/name")
            .await
            .unwrap()
            .as_deref(),
        Some("guest")
    );
    let st = xsd.stats().domains[&0].clone();
    assert_eq!(st.connections, 2, "{st:?}");

    // Too many distinct events were missed: the watch asks for a re-list,
    // then reports changes as usual.
    assert_eq!(w.next().await.as_deref(), Some("/local/domain"));
    writer
        .write("/local/domain/5/data/after", "1")
        .await
        .unwrap();
    loop {
        let p = w.next().await.expect("watch ended");
        if p == "/local/domain/5/data/after" {
            break;
        }
        // Only events of the burst that were still on their way.
        assert!(p.starts_with("/local/domain/5/data/"), "{p}");
    }
}
