//! The simulated xenstored driven by the `xenstore-rs` async client, which is
//! what the daemons use. It finds the socket through `XENSTORED_PATH` only,
//! so this binary holds a single test that sets it before each connect,
//! while no other thread reads the environment.

use futures::StreamExt;
use tokio::net::UnixListener;
use xenstore_rs::tokio::XsTokio;
use xenstore_rs::{AsyncWatch, AsyncXs};
use xenvt::sim::xenstored::{Xenstored, XenstoredConfig};

async fn connect(path: &std::path::Path) -> XsTokio {
    std::env::set_var("XENSTORED_PATH", path);
    XsTokio::new().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xenstore_rs_client() {
    let dir = tempfile::tempdir().unwrap();
    let xsd = Xenstored::new(XenstoredConfig::default());
    let s0 = dir.path().join("dom0.sock");
    let s5 = dir.path().join("dom5.sock");
    let l0 = UnixListener::bind(&s0).unwrap();
    let x = xsd.clone();
    tokio::spawn(async move { x.serve(l0, 0).await });
    xsd.introduce_domain(5, "guest").unwrap();
    let l5 = UnixListener::bind(&s5).unwrap();
    let x = xsd.clone();
    let served5 = tokio::spawn(async move { x.serve(l5, 5).await });

    let dom0 = connect(&s0).await;
    let guest = connect(&s5).await;

    assert_eq!(
        &*dom0.read("/local/domain/0/name").await.unwrap(),
        "Domain-0"
    );
    assert_eq!(&*guest.read("name").await.unwrap(), "guest");
    let mut releases = dom0.watch("@releaseDomain").await.unwrap();
    assert_eq!(releases.next().await.as_deref(), Some("@releaseDomain"));

    // The guest publishes under data/, dom0 watches it.
    let mut w = dom0.watch("/local/domain/5/data").await.unwrap();
    assert_eq!(w.next().await.as_deref(), Some("/local/domain/5/data"));
    guest.write("data/xenvt/state", "ready").await.unwrap();
    assert_eq!(
        w.next().await.as_deref(),
        Some("/local/domain/5/data/xenvt")
    );
    assert_eq!(
        w.next().await.as_deref(),
        Some("/local/domain/5/data/xenvt/state")
    );
    assert_eq!(
        &*dom0.read("/local/domain/5/data/xenvt/state").await.unwrap(),
        "ready"
    );
    let mut kids: Vec<String> = dom0
        .directory("/local/domain/5/data")
        .await
        .unwrap()
        .into_iter()
        .map(String::from)
        .collect();
    kids.sort();
    assert_eq!(kids, ["xenvt"]);

    // Permission errors surface as errors, not as data.
    let e = guest.write("/local/domain/0/x", "1").await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    let e = dom0.read("/nope").await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");

    // Removal fires the watch once, with the removed node's path (removed
    // descendants only fire watches set exactly on them); release fires
    // @releaseDomain and ends serve.
    guest.rm("data/xenvt").await.unwrap();
    assert_eq!(
        w.next().await.as_deref(),
        Some("/local/domain/5/data/xenvt")
    );
    xsd.release_domain(5).unwrap();
    assert_eq!(w.next().await.as_deref(), Some("/local/domain/5/data"));
    assert_eq!(releases.next().await.as_deref(), Some("@releaseDomain"));
    served5.await.unwrap().unwrap();
    assert_eq!(xsd.stats().domains.get(&5), None);
    // Not checked: a request on `guest` now. xenstore-rs 0.8 does not notice
    // that its socket was closed and such a request never completes.
}
