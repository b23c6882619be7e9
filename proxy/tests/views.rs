//! The console view and view switching through the daemon, with a shell on a pty as the
//! guest console and a real Xvnc as the desktop.
//!
//! The guest console is modelled as on Xen: the shell's terminal is one pty (the guest's
//! hvc0), a relay plays xenconsoled between its master and the master of a second pty,
//! and the proxy opens that second pty's slave by path.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::guest::*;
use common::*;
use xenvt_proxy::rfb::encoding::*;
use xenvt_proxy::rfb::ClientMessage;

const X_TOOLS: &[&str] = &["Xvnc", "xsetroot", "vncconfig", "sh"];

const XK_CONTROL_L: u32 = 0xffe3;
const XK_ALT_L: u32 = 0xffe9;
const XK_F1: u32 = 0xffbe;
const XK_F7: u32 = 0xffc4;
const XK_RETURN: u32 = 0xff0d;

fn shows(v: &TestViewer, text: &str) -> usize {
    count_text(v.pixels(), usize::from(v.size().0), text)
}

async fn tap(v: &mut TestViewer, keys: &[u32]) {
    for &k in keys {
        v.send(ClientMessage::KeyEvent { down: true, key: k }).await;
    }
    for &k in keys.iter().rev() {
        v.send(ClientMessage::KeyEvent {
            down: false,
            key: k,
        })
        .await;
    }
}

async fn type_line(v: &mut TestViewer, line: &str) {
    for c in line.chars() {
        tap(v, &[c as u32]).await;
    }
    tap(v, &[XK_RETURN]).await;
}

fn config(console: &GuestConsole, extra: &str) -> String {
    format!(
        "[[domain]]\ndomid = 1\nname = \"vm1\"\nport = 0\nconsole = \"pty:{}\"\n\
         [reverse]\ndomid = 1\nlisten = \"127.0.0.1:0\"\n[xenstore]\nenabled = false\n{extra}",
        console.path.display()
    )
}

#[tokio::test]
async fn console_typing_switching_and_automatic_switches() {
    if !have(X_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = shell_console();
    let p = Proxy::start(dir.path(), &config(&g, "[switch]\nmanual_hold_ms = 0\n"));
    let mut v = TestViewer::connect(&p.viewer_addr(1), MODERN, None).await;
    assert_eq!(v.name, "vm1 \u{2014} console");
    v.until("the prompt", |v| is_console(v) && shows(v, "$ ") >= 1)
        .await;
    type_line(&mut v, "echo hello").await;
    // The command line and its output.
    v.until("hello twice", |v| shows(v, "hello") >= 2).await;

    // A desktop connects: viewers move to it.
    let x = Xvnc::start(dir.path(), "320x240");
    x.solid("#ff8000");
    x.connect_to(p.reverse.as_deref().unwrap());
    v.until("the desktop", |v| v.size() == (320, 240) && v.all(0xff8000))
        .await;
    assert_eq!(v.name, "vm1 \u{2014} desktop (xtest)");

    // Ctrl-Alt-F1 and Ctrl-Alt-F7 by hand; the size follows the view.
    tap(&mut v, &[XK_CONTROL_L, XK_ALT_L, XK_F1]).await;
    v.until("the console again", |v| {
        is_console(v) && shows(v, "hello") >= 2
    })
    .await;
    type_line(&mut v, "echo again").await;
    v.until("typing still reaches the shell", |v| shows(v, "again") >= 2)
        .await;
    tap(&mut v, &[XK_CONTROL_L, XK_ALT_L, XK_F7]).await;
    v.until("the desktop again", |v| {
        v.size() == (320, 240) && v.all(0xff8000)
    })
    .await;

    // The desktop goes (a guest reboot): back to the console; it comes back: to it.
    drop(x);
    v.until("the console after the desktop went", is_console)
        .await;
    let x = Xvnc::start(dir.path(), "200x100");
    x.solid("#0000ff");
    x.connect_to(p.reverse.as_deref().unwrap());
    v.until("the new desktop", |v| {
        v.size() == (200, 100) && v.all(0x0000ff)
    })
    .await;
}

/// Writes numbered lines to the console until stopped.
fn flood(master: std::fs::File, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut m = master;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let colour = 31 + i % 7;
            if m.write_all(
                format!(
                    "\x1b[{colour}mline {i} \x1b[0m{}\r\n",
                    "=".repeat((i % 60) as usize)
                )
                .as_bytes(),
            )
            .is_err()
            {
                break;
            }
            i += 1;
            if i % 50 == 0 {
                std::thread::yield_now();
            }
        }
    })
}

#[tokio::test]
async fn switching_a_hundred_times_keeps_every_encoding_intact() {
    if !have(X_TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = bare_console();
    let p = Proxy::start(dir.path(), &config(&g, ""));
    let x = Xvnc::start(dir.path(), "300x200");
    x.run(
        "xsetroot",
        &["-mod", "4", "4", "-fg", "#ff0000", "-bg", "#00ffc0"],
    );
    x.connect_to(p.reverse.as_deref().unwrap());
    let resize = [DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE, DESKTOP_NAME, LAST_RECT];
    let mut reference =
        TestViewer::connect(&p.viewer_addr(1), &[RAW, DESKTOP_SIZE, DESKTOP_NAME], None).await;
    reference
        .until("the desktop in the reference viewer", |v| {
            v.size() == (300, 200)
        })
        .await;
    for enc in [ZRLE, TIGHT, ZLIB, HEXTILE, RAW] {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = flood(g.master.try_clone().unwrap(), stop.clone());
        let mut list = vec![enc];
        list.extend_from_slice(&resize);
        let mut v = TestViewer::connect(&p.viewer_addr(1), &list, None).await;
        v.until("the desktop", |v| v.size() == (300, 200)).await;
        for i in 0..100 {
            let key = if i % 2 == 0 { XK_F1 } else { XK_F7 };
            tap(&mut v, &[XK_CONTROL_L, XK_ALT_L, key]).await;
            v.request(true).await;
            let _ = v.update().await;
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let marker = format!("done with {enc}");
        g.master
            .try_clone()
            .unwrap()
            .write_all(format!("\x1b[2J\x1b[H{marker}").as_bytes())
            .unwrap();
        // Even switches: the desktop is showing. Its picture, through this viewer's
        // streams, equals the reference's.
        v.until("the desktop after the switches", |v| {
            v.size() == (300, 200) && v.name.ends_with("(xtest)")
        })
        .await;
        reference
            .until("the reference on the desktop", |r| r.size() == (300, 200))
            .await;
        assert!(
            v.pixels() == reference.pixels(),
            "encoding {enc}: desktop differs"
        );
        tap(&mut v, &[XK_CONTROL_L, XK_ALT_L, XK_F1]).await;
        v.until("the console with the marker", |v| {
            is_console(v) && shows(v, &marker) == 1
        })
        .await;
        reference
            .until("the reference on the console", |r| {
                is_console(r) && shows(r, &marker) == 1
            })
            .await;
        assert!(
            v.pixels() == reference.pixels(),
            "encoding {enc}: console differs"
        );
        tap(&mut v, &[XK_CONTROL_L, XK_ALT_L, XK_F7]).await;
        v.until("back on the desktop", |v| v.size() == (300, 200))
            .await;
    }
}
