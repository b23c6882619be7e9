//! Console view benchmarks through the daemon, run by hand (they are `#[ignore]`d):
//!
//! ```sh
//! cargo test --release -p xenvt-proxy --test console_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each prints its figures, and a `ratio` line where a baseline exists.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::guest::*;
use common::*;
use xenvt_proxy::rfb::ClientMessage;

fn one_domain(console: &GuestConsole) -> String {
    format!(
        "[[domain]]\ndomid = 1\nname = \"vm1\"\nport = 0\nconsole = \"pty:{}\"\n\
         [xenstore]\nenabled = false\n",
        console.path.display()
    )
}

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// The guest echoes what is typed, as a terminal in cooked mode would.
fn echo_guest(g: &GuestConsole) {
    let mut rd = g.master.try_clone().unwrap();
    let mut wr = g.master.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        while let Ok(n) = rd.read(&mut buf) {
            if n == 0 || wr.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

/// Key event sent -> the echoed glyph's pixels reach the viewer; median and 90th
/// percentile of 200 keys typed at 20 a second.
#[tokio::test]
#[ignore]
async fn keypress_to_pixel_latency() {
    let dir = tempfile::tempdir().unwrap();
    let g = bare_console();
    echo_guest(&g);
    let p = Proxy::start(dir.path(), &one_domain(&g));
    let mut v = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    v.until("the console", is_console).await;
    let mut lat = Vec::new();
    for i in 0..200u32 {
        // Letters across the screen, a fresh line now and then so nothing scrolls.
        let key = if i % 70 == 69 {
            0xff0d
        } else {
            u32::from(b'a') + i % 26
        };
        // Typing at 20 keys a second: slower than the view's 30 frames a second, so
        // each key meets an idle pacer (faster typing waits for the next frame).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = v.pixels().to_vec();
        // An incremental request is outstanding before the key goes, as a viewer
        // keeps one.
        v.request(true).await;
        let t = Instant::now();
        v.send(ClientMessage::KeyEvent { down: true, key }).await;
        v.send(ClientMessage::KeyEvent { down: false, key }).await;
        loop {
            let _ = v.update().await;
            if v.pixels() != before.as_slice() {
                break;
            }
            v.request(true).await;
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "console keypress_to_pixel median_ms {:.2} p90_ms {:.2} n {}",
        lat[lat.len() / 2].as_secs_f64() * 1e3,
        lat[lat.len() * 9 / 10].as_secs_f64() * 1e3,
        lat.len()
    );
}

/// 10 MB of text lines, as `cat` of a log file would write.
fn text(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut i = 0u64;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "{i:08} the quick brown fox jumps over the lazy dog {}\r\n",
                "-".repeat((i % 23) as usize)
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(len);
    out
}

/// 10 MB through the console view (until its last screen reaches a viewer) against
/// the same bytes through a plain pty reader.
#[tokio::test]
#[ignore]
async fn cat_throughput_console_vs_pty_reader() {
    const LEN: usize = 10 << 20;
    let data = text(LEN);

    // Baseline: a thread reading the pty's other end and dropping the bytes.
    let g = bare_console();
    let mut slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&g.path)
        .unwrap();
    let mut w = g.master.try_clone().unwrap();
    let t = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while n < LEN {
            n += slave.read(&mut buf).unwrap();
        }
    });
    w.write_all(&data).unwrap();
    reader.join().unwrap();
    let pty = t.elapsed();
    drop(g);

    // The console view: the bytes, then a marker on a cleared screen.
    let dir = tempfile::tempdir().unwrap();
    let g = bare_console();
    let p = Proxy::start(dir.path(), &one_domain(&g));
    let mut v = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    v.until("the console", is_console).await;
    let mut w = g.master.try_clone().unwrap();
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.write_all(b"\x1b[2J\x1b[Hend of cat").unwrap();
    });
    v.until("the end of the file", |v| {
        count_text(v.pixels(), 640, "end of cat") == 1
    })
    .await;
    let console = t.elapsed();
    writer.join().unwrap();
    let mbps = |d: Duration| LEN as f64 / d.as_secs_f64() / 1e6;
    println!(
        "console cat_10MB console_ms {:.0} ({:.1} MB/s) pty_reader_ms {:.0} ({:.1} MB/s)",
        console.as_secs_f64() * 1e3,
        mbps(console),
        pty.as_secs_f64() * 1e3,
        mbps(pty)
    );
    println!(
        "ratio console_vs_pty_reader {:.3}",
        pty.as_secs_f64() / console.as_secs_f64()
    );
}

/// The daemon's resident memory per domain, each with a console view and one viewer.
#[tokio::test]
#[ignore]
async fn memory_per_domain() {
    async fn rss_with(n: u16) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let guests: Vec<GuestConsole> = (0..n).map(|_| bare_console()).collect();
        let mut cfg = String::from("[xenstore]\nenabled = false\n");
        for (i, g) in guests.iter().enumerate() {
            cfg.push_str(&format!(
                "[[domain]]\ndomid = {}\nname = \"vm{}\"\nport = 0\nconsole = \"pty:{}\"\n",
                i + 1,
                i + 1,
                g.path.display()
            ));
        }
        let p = Proxy::start(dir.path(), &cfg);
        let mut viewers = Vec::new();
        for (i, g) in guests.iter().enumerate() {
            let mut m = g.master.try_clone().unwrap();
            m.write_all(format!("console of vm{}\r\n", i + 1).as_bytes())
                .unwrap();
            let mut v = TestViewer::connect(&p.viewer_addr(i as u16 + 1), MODERN, None).await;
            let want = format!("vm{}", i + 1);
            v.until("the console", |v| {
                is_console(v) && count_text(v.pixels(), 640, &want) == 1
            })
            .await;
            viewers.push(v);
        }
        rss_bytes(p.child.id())
    }
    let one = rss_with(1).await;
    let many = rss_with(101).await;
    println!(
        "console memory rss_1_domain_kib {} rss_101_domains_kib {} per_domain_kib {:.0}",
        one >> 10,
        many >> 10,
        (many.saturating_sub(one)) as f64 / 100.0 / 1024.0
    );
}
