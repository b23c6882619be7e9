//! A xenstored that accepts but never answers must not hang a daemon: every
//! `XsClient` request has a deadline. (Its own test binary, because the client
//! takes the socket path from the environment.)

use std::time::Duration;

use xenvt_ring::xenstore::{Xenstore, XsClient};

#[tokio::test]
async fn a_silent_xenstored_gives_a_timeout_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xenstored.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Accept and hold connections, read nothing, answer nothing.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    std::env::set_var("XENSTORED_PATH", &path);
    let xs = XsClient::connect()
        .await
        .unwrap()
        .with_deadline(Duration::from_millis(200));
    let err = xs.read("/local/domain/0/name").await.unwrap_err();
    assert!(
        err.to_string().contains("no answer from xenstored"),
        "{err}"
    );
    let err = xs.write("/x", "1").await.unwrap_err();
    assert!(err.to_string().contains("no answer"), "{err}");
}
