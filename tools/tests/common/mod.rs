//! What the tests that drive `xenvt chan` between domains of the simulated
//! host share.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use xenvt::harness::SimHost;
use xenvt::sim::control::DomainInfo;

/// A channel between a guest process and a dom0 process, both running.
pub struct ChanPair {
    /// `xenvt chan serve` in the guest.
    pub guest: Child,
    /// `xenvt chan connect` in dom0 (its stderr piped).
    pub d0: Child,
    /// dom0's stdout after its `connected` line (open while this lives).
    #[allow(dead_code)] // Not every test reads on.
    pub d0_lines: Lines<BufReader<ChildStdout>>,
    /// The guest's stdout, open while this lives so its writes never fail.
    _guest_out: Lines<BufReader<ChildStdout>>,
}

/// Starts `xenvt chan serve` in `dom` at `data/NODE` (ring order 12) sending
/// `send` bytes and waits for its `ready`, then `xenvt chan connect` from dom0
/// with `d0_args` added and waits for its `connected`.
pub async fn chan_pair(
    host: &SimHost,
    dom: &DomainInfo,
    node: &str,
    send: &str,
    d0_args: &[&str],
) -> ChanPair {
    let dom0 = host.dom0().await.unwrap();
    let node = format!("data/{node}");
    let mut guest = host.xenvt_in(dom);
    guest
        .args(["chan", "serve", "--path", &node, "--peer", "0"])
        .args(["--order", "12", "--send", send, "--recv", "0"])
        .stdout(Stdio::piped());
    let mut guest = guest.spawn().unwrap();
    let mut glines = BufReader::new(guest.stdout.take().unwrap()).lines();
    assert_eq!(glines.next_line().await.unwrap().as_deref(), Some("ready"));

    let path = format!("/local/domain/{}/{node}", dom.id);
    let mut d0 = host.xenvt_in(&dom0);
    d0.args(["chan", "connect", "--path", &path])
        .args(["--peer", &dom.id.to_string()])
        .args(d0_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut d0 = d0.spawn().unwrap();
    let mut d0_lines = BufReader::new(d0.stdout.take().unwrap()).lines();
    assert_eq!(
        d0_lines.next_line().await.unwrap().as_deref(),
        Some("connected")
    );
    ChanPair {
        guest,
        d0,
        d0_lines,
        _guest_out: glines,
    }
}
