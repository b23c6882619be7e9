//! `xenvt status` as a process against two control sockets that answer like
//! the backend and the proxy: the merged table, `--json`, one daemon down, and
//! both down.

use std::path::Path;
use std::sync::Arc;

use xenvt_ring::control::{self, Handler, JSON_TYPE};

struct Canned(&'static str);

impl Handler for Canned {
    fn get(&self, path: &str) -> Option<(&'static str, String)> {
        (path == "/status").then(|| (JSON_TYPE, self.0.to_owned()))
    }
}

const BACKEND: &str = r#"{"daemon":"backend","domains":[{"domid":4,"name":"vm4","agent_state":"attached","ring_order_to_guest":15,"ring_order_from_guest":17,"streams_open":1,"streams_opened":3,"bytes_to_guest":2048,"bytes_from_guest":10,"credit_stalls":2}]}"#;
const PROXY: &str = r#"{"daemon":"proxy","domains":[{"domid":4,"name":"vm4","viewers":2,"view":"desktop","desktop":"connected"}]}"#;

async fn status(backend: &Path, proxy: &Path, json: bool) -> std::process::Output {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_xenvt"));
    c.arg("status")
        .arg("--backend")
        .arg(backend)
        .arg("--proxy")
        .arg(proxy);
    if json {
        c.arg("--json");
    }
    c.output().await.unwrap()
}

#[tokio::test]
async fn table_json_and_daemons_down() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("backend.ctl");
    let p = dir.path().join("proxy.ctl");
    let (bl, _bf) = control::bind_unix(&b).unwrap();
    let (pl, pf) = control::bind_unix(&p).unwrap();
    let bt = tokio::spawn(control::serve_unix(bl, Arc::new(Canned(BACKEND))));
    let pt = tokio::spawn(control::serve_unix(pl, Arc::new(Canned(PROXY))));

    let out = status(&b, &p, false).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("DOMID  NAME  AGENT"), "{text}");
    for want in [
        "vm4",
        "attached",
        "15/17",
        "1 (3 total)",
        "2.0 KiB",
        "10 B",
        "desktop",
        "connected",
    ] {
        assert!(lines[1].contains(want), "{want:?} missing: {text}");
    }

    let out = status(&b, &p, true).await;
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["backend"]["domains"][0]["credit_stalls"], 2);
    assert_eq!(j["proxy"]["domains"][0]["viewers"], 2);

    // The proxy goes away: the backend's half is still shown.
    pt.abort();
    let _ = pt.await;
    drop(pf);
    let out = status(&b, &p, false).await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("proxy: down (not answering on "), "{text}");
    assert!(text.contains("attached"), "{text}");

    // Both gone: it says so and fails.
    bt.abort();
    let _ = bt.await;
    let out = status(&b, &p, false).await;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("backend: down") && text.contains("proxy: down"),
        "{text}"
    );
}
