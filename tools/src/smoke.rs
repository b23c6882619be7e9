//! `xenvt smoke`: a private simulated host, a guest domain, and a checked channel
//! transfer both ways between a process in the guest and one in dom0.

use std::process::Stdio;
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::chan::ChanReport;
use crate::harness::SimHost;
use crate::pattern::expected_sha256;

/// Arguments of `xenvt smoke`.
#[derive(Args, Debug)]
pub struct SmokeArgs {
    /// Bytes to move in each direction.
    #[arg(long, default_value_t = 64 << 20)]
    bytes: u64,
    /// Ring order, both directions (10..=20).
    #[arg(long, default_value_t = 16)]
    order: u8,
    /// Say what happens at each step.
    #[arg(long)]
    verbose: bool,
}

/// Runs the smoke test; an error says which check failed.
pub async fn run(a: SmokeArgs) -> anyhow::Result<()> {
    let say = |m: &str| {
        if a.verbose {
            println!("smoke: {m}");
        }
    };
    let exe = std::env::current_exe()?;
    say("starting a simulated Xen host");
    let host = SimHost::start(&exe, &[]).await?;
    say(&format!("host directory {}", host.dir().display()));
    let dom = host.create("guest").await?;
    let dom0 = host.dom0().await?;
    say(&format!("created domain {} (id {})", dom.name, dom.id));

    let (n, order) = (a.bytes.to_string(), a.order.to_string());
    let mut guest = host.xenvt_in(&dom);
    guest
        .args(["chan", "serve", "--path", "data/xenvt-smoke", "--peer", "0"])
        // The guest reads until dom0 closes: that checks that the end of stream is exact.
        .args(["--order", &order, "--send", &n])
        .args(["--send-seed", "1", "--recv-seed", "2"])
        .stdout(Stdio::piped());
    let mut guest = guest.spawn()?;
    let mut glines = BufReader::new(guest.stdout.take().context("no stdout")?).lines();
    ensure!(
        glines.next_line().await?.as_deref() == Some("ready"),
        "the guest end did not publish its channel"
    );
    say("guest process granted a channel and published it in xenstore");

    let start = Instant::now();
    let path = format!("/local/domain/{}/data/xenvt-smoke", dom.id);
    let d0 = host
        .xenvt_in(&dom0)
        .args([
            "chan",
            "connect",
            "--path",
            &path,
            "--peer",
            &dom.id.to_string(),
        ])
        .args([
            "--send",
            &n,
            "--recv",
            &n,
            "--send-seed",
            "2",
            "--recv-seed",
            "1",
        ])
        .output()
        .await?;
    ensure!(d0.status.success(), "dom0 end failed: {}", d0.status);
    let d0: ChanReport = serde_json::from_str(
        String::from_utf8_lossy(&d0.stdout)
            .lines()
            .last()
            .context("dom0 end printed nothing")?,
    )?;
    let g: ChanReport = serde_json::from_str(
        &glines
            .next_line()
            .await?
            .context("guest end printed no result")?,
    )?;
    ensure!(guest.wait().await?.success(), "guest end failed");
    let secs = start.elapsed().as_secs_f64();

    let to_guest = expected_sha256(2, a.bytes);
    let to_dom0 = expected_sha256(1, a.bytes);
    ensure!(
        g.received == a.bytes && g.received_sha256 == to_guest,
        "dom0->guest stream wrong: {g:?}"
    );
    ensure!(
        d0.received == a.bytes && d0.received_sha256 == to_dom0,
        "guest->dom0 stream wrong: {d0:?}"
    );
    println!(
        "smoke: {} MiB each way between domain {} and dom0 in {:.2}s, every byte checked, sha256 ok",
        a.bytes >> 20,
        dom.id,
        secs
    );

    host.wait_clean(5_000)
        .await
        .context("after both ends exited")?;
    say("no grant, mapping or event channel left behind");

    host.client()
        .await?
        .call(&crate::sim::control::Request::Destroy {
            domain: crate::sim::control::DomainRef::Id(dom.id),
            keep_processes: false,
        })
        .await?;
    host.stop().await?;
    say("host stopped cleanly");
    Ok(())
}
