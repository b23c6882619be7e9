//! The backend over the heap platform and an in-memory xenstore, with a guest
//! played by the test: per-stream log lines (from the mux driver's task)
//! carry the guest's domain in their span, and the control socket reports the
//! attached guest in `/status` and `/metrics`.

mod common;

use common::{Captured, LIMIT};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use xenvt_backend::xs::Xs;
use xenvt_backend::{Backend, Config};
use xenvt_ring::config::Load;
use xenvt_ring::mux::{self, MuxConfig};
use xenvt_ring::platform::heap::HeapHost;
use xenvt_ring::xenstore::{MemStore, Xenstore};
use xenvt_ring::{Channel, ChannelConfig};

// A current-thread runtime: every task runs on this thread, under the
// thread-local subscriber set below.
#[tokio::test]
async fn stream_logs_carry_the_domain_and_status_reports_it() {
    let logs = Captured::default();
    let _guard = logs.capture("debug");
    tokio::time::timeout(LIMIT, scenario(&logs)).await.unwrap();
}

async fn scenario(logs: &Captured) {
    let dir = tempfile::tempdir().unwrap();
    let deliver = dir.path().join("svc.sock");
    let svc = UnixListener::bind(&deliver).unwrap();
    let run = dir.path().join("run");
    let cfg = Config::from_str_for(
        None,
        &format!(
            "run_dir = {:?}\n[services.svc]\ndeliver = {:?}\n[limits]\nmax_streams = 1\n",
            run, deliver
        ),
    )
    .unwrap();
    let control = cfg.control.clone();
    assert!(control.starts_with(&run));

    let host = HeapHost::new();
    let xs = MemStore::new();
    xs.write("domid", "0").await.unwrap();
    xs.write("/local/domain/0/name", "Domain-0").await.unwrap();

    // The guest publishes its channel as an agent does.
    let server = Channel::server(&host.domain(7), 0, ChannelConfig::default()).unwrap();
    let base = "/local/domain/7/data/xenvt";
    xs.write("/local/domain/7/name", "vm7").await.unwrap();
    xs.write(&format!("{base}/ring-ref"), &server.ring_ref().to_string())
        .await
        .unwrap();
    xs.write(
        &format!("{base}/event-channel"),
        &server.event_port().to_string(),
    )
    .await
    .unwrap();
    xs.write(&format!("{base}/state"), "ready").await.unwrap();

    let backend = Backend::new(cfg, Arc::new(host.domain(0)), Xs::new(xs.clone()))
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(backend.run(async {
        let _ = stop_rx.await;
    }));

    let (guest, _guest_in) = mux::start(server, MuxConfig::default()).await.unwrap();
    // The first stream is delivered to the service; the second one is over the
    // backend's limit of one, and the backend's mux driver refuses it.
    let (_a, a_mux) = UnixStream::pair().unwrap();
    let first = guest.open("svc", a_mux).await.unwrap();
    let (_held, _) = svc.accept().await.unwrap();
    let (_b, b_mux) = UnixStream::pair().unwrap();
    assert!(guest.open("svc", b_mux).await.is_err());

    let line = logs
        .text()
        .lines()
        .find(|l| l.contains("mux: refusing stream"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no refusal logged:\n{}", logs.text()));
    assert!(
        line.contains("guest{domid=7 name=vm7}"),
        "the driver's line lacks the domain: {line}"
    );

    // The control socket sees the guest attached, with its ring orders.
    let body = xenvt_ring::control::get_unix(&control, "/status", 1 << 20)
        .await
        .unwrap();
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    let d = &st["domains"][0];
    assert_eq!(d["domid"], 7, "{body}");
    assert_eq!(d["name"], "vm7");
    assert_eq!(d["agent_state"], "attached");
    assert_eq!(d["streams_open"], 1, "{body}");
    assert_eq!(d["streams_refused"], 1, "{body}");
    assert!(d["ring_order_to_guest"].as_u64().unwrap() >= 10, "{body}");
    let m = xenvt_ring::control::get_unix(&control, "/metrics", 1 << 20)
        .await
        .unwrap();
    assert!(
        m.contains("xenvt_backend_agent_attached{domid=\"7\",name=\"vm7\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("xenvt_backend_streams_refused_total{domid=\"7\",name=\"vm7\"} 1\n"),
        "{m}"
    );

    drop(first);
    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!control.exists(), "the control socket is removed on exit");
}
