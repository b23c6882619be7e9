//! The proxy's control socket as a process sees it: `/status` and `/metrics`
//! about a domain with a viewer, a 0600 socket removed on a clean exit, and a
//! config error that names the line and the fix.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::*;

#[tokio::test]
async fn status_and_metrics_report_the_domain_and_its_viewer() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proxy::start(
        dir.path(),
        "[xenstore]\nenabled = false\n[control]\nsocket = \"ctl.sock\"\n\
         [[domain]]\ndomid = 1\nname = \"vm1\"\nport = 0\nconsole = \"none\"\n",
    );
    let ctl = dir.path().join("ctl.sock");
    assert!(
        p.extra.iter().any(|l| l.starts_with("control path=")),
        "{:?}",
        p.extra
    );
    let mode = std::fs::metadata(&ctl).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut v = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    v.until("the console", is_console).await;

    let body = xenvt_ring::control::get_unix(&ctl, "/status", 1 << 20)
        .await
        .unwrap();
    let st: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["daemon"], "proxy");
    let d = &st["domains"][0];
    assert_eq!(d["domid"], 1, "{body}");
    assert_eq!(d["name"], "vm1");
    assert_eq!(d["viewers"], 1, "{body}");
    assert_eq!(d["view"], "console", "{body}");
    assert_eq!(d["desktop"], "none", "{body}");
    assert_eq!(d["viewers_connected"], 1, "{body}");
    assert!(d["updates_sent"].as_u64().unwrap() >= 1, "{body}");
    assert!(d["bytes_to_viewers"].as_u64().unwrap() > 0, "{body}");

    let m = xenvt_ring::control::get_unix(&ctl, "/metrics", 1 << 20)
        .await
        .unwrap();
    for want in [
        "# TYPE xenvt_proxy_viewers gauge\n",
        "xenvt_proxy_viewers{domid=\"1\",name=\"vm1\"} 1\n",
        "xenvt_proxy_current_view{domid=\"1\",name=\"vm1\",view=\"console\"} 1\n",
        "xenvt_proxy_desktop_connected{domid=\"1\",name=\"vm1\"} 0\n",
        "xenvt_proxy_viewer_disconnects_total{domid=\"1\",name=\"vm1\",reason=\"left\"} 0\n",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }

    drop(v);
    assert!(p.stop().success());
    assert!(
        !ctl.exists(),
        "the control socket is removed on a clean exit"
    );
}

#[test]
fn check_prints_the_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        "[viewer]\nlisten = \"127.0.0.1\"\n\n[control]\nlisten = \"0.0.0.0:9102\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_xenvt-proxy"))
        .arg("--config")
        .arg(&cfg)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5:1: control.listen: 0.0.0.0:9102 is not a loopback address; use a loopback address", cfg.display())),
        "{err}"
    );
}
