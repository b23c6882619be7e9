//! A guest console that writes random bytes at full speed, through the daemon: another
//! domain's console keeps answering typed input, the spewing console's own viewer keeps
//! getting well-formed updates, and the daemon's memory stays bounded.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::guest::*;
use common::*;
use xenvt_proxy::rfb::ClientMessage;

const XK_RETURN: u32 = 0xff0d;
/// The spewer writes at least this much while the other console is being used.
const SPEW_BYTES: u64 = 32 << 20;
/// Growth of the daemon's resident set we accept over the run (generous: the point is
/// that it does not grow with the bytes spewed).
const RSS_SLACK: u64 = 64 << 20;

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Writes pseudo-random bytes (escape sequences included, by chance) until stopped.
fn spew(master: std::fs::File, stop: Arc<AtomicBool>, written: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut m = master;
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut buf = [0u8; 16384];
        while !stop.load(Ordering::Relaxed) {
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            if m.write_all(&buf).is_err() {
                break;
            }
            written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
    });
}

async fn type_line(v: &mut TestViewer, line: &str) {
    for key in line.chars().map(|c| c as u32).chain([XK_RETURN]) {
        v.send(ClientMessage::KeyEvent { down: true, key }).await;
        v.send(ClientMessage::KeyEvent { down: false, key }).await;
    }
}

#[tokio::test]
async fn spewing_console_does_not_starve_another_or_grow_the_daemon() {
    if !have(&["sh"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let noisy = bare_console();
    let calm = shell_console();
    let cfg = format!(
        "[[domain]]\ndomid = 1\nname = \"noisy\"\nport = 0\nconsole = \"pty:{}\"\n\
         [[domain]]\ndomid = 2\nname = \"calm\"\nport = 0\nconsole = \"pty:{}\"\n\
         [xenstore]\nenabled = false\n",
        noisy.path.display(),
        calm.path.display()
    );
    let p = Proxy::start(dir.path(), &cfg);
    let pid = p.child.id();

    // A viewer watches the spewing console the whole time.
    let mut watcher = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    watcher.until("the noisy console", is_console).await;
    let mut v = TestViewer::connect(&p.viewer_addr(2), MODERN, None).await;
    v.until("the calm console", is_console).await;
    type_line(&mut v, "echo warm$((1+1))").await;
    v.until("the first answer", |v| {
        count_text(v.pixels(), 640, "warm2") == 1
    })
    .await;
    let before = rss_bytes(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    spew(
        noisy.master.try_clone().unwrap(),
        stop.clone(),
        written.clone(),
    );
    let watching = Arc::new(AtomicBool::new(true));
    let w = watching.clone();
    let watch = tokio::spawn(async move {
        let mut updates = 0u64;
        while w.load(Ordering::Relaxed) {
            watcher.request(true).await;
            let _ = watcher.update().await;
            updates += 1;
        }
        updates
    });

    // Keep using the calm console until the spewer has written enough.
    let mut answers = 0u32;
    while written.load(Ordering::Relaxed) < SPEW_BYTES || answers < 5 {
        answers += 1;
        assert!(answers < 10_000, "the spewer stalled");
        type_line(&mut v, &format!("clear; echo ans$(({answers}*7))")).await;
        let want = format!("ans{}", answers * 7);
        v.until(&format!("answer {answers}"), |v| {
            count_text(v.pixels(), 640, &want) == 1
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    watching.store(false, Ordering::Relaxed);
    let updates = watch.await.expect("the watcher decoded every update");
    assert!(updates > 0);
    let after = rss_bytes(pid);
    eprintln!(
        "spewed {} MiB; {answers} answers; {updates} updates to the watcher; \
         RSS {} -> {} KiB",
        written.load(Ordering::Relaxed) >> 20,
        before >> 10,
        after >> 10
    );
    assert!(
        after < before + RSS_SLACK,
        "RSS grew from {before} to {after}"
    );
}
