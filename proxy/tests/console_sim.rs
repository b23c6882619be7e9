//! The proxy as dom0 of the simulated host (`xenvt sim run`): domains are found in
//! xenstore as they are created and destroyed, and each one's console is the pty the
//! host publishes in `/local/domain/<id>/console/tty`, with `/bin/sh -i` behind it.
//!
//! Needs the `xenvt` binary next to this test's (`cargo build -p xenvt`); set
//! `XENVT_BIN` to use another.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::guest::count_text;
use common::*;
use xenvt_proxy::rfb::ClientMessage;

const XK_RETURN: u32 = 0xff0d;

fn xenvt_bin() -> Option<PathBuf> {
    let p = std::env::var_os("XENVT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/<profile>/deps/<this test> -> target/<profile>/xenvt
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().join("xenvt")
        });
    if p.is_file() {
        Some(p)
    } else {
        missing(&format!(
            "the xenvt binary is not at {} (cargo build -p xenvt, or set XENVT_BIN)",
            p.display()
        ));
        None
    }
}

/// `xenvt sim run` in a private directory; killed on drop.
struct Sim {
    exe: PathBuf,
    dir: PathBuf,
    child: Child,
}

impl Sim {
    fn start(exe: &Path, dir: &Path) -> Sim {
        let dir = dir.join("host");
        let mut child = Command::new(exe)
            .args(["sim", "run", "--dir"])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn xenvt sim run");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(first.starts_with("ready"), "sim said {first:?}");
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Sim {
            exe: exe.to_owned(),
            dir,
            child,
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.exe)
            .arg("sim")
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("xenvt sim");
        assert!(out.status.success(), "xenvt sim {args:?} failed");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn create(&self, name: &str) -> u16 {
        self.ctl(&["create", name]).parse().expect("a domain id")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn type_line(v: &mut TestViewer, line: &str) {
    for key in line.chars().map(|c| c as u32).chain([XK_RETURN]) {
        v.send(ClientMessage::KeyEvent { down: true, key }).await;
        v.send(ClientMessage::KeyEvent { down: false, key }).await;
    }
}

fn shows(v: &TestViewer, text: &str) -> usize {
    count_text(v.pixels(), usize::from(v.size().0), text)
}

/// A viewer on the domain's console that gets an answer from its shell.
async fn shell_answers(addr: &str, name: &str) -> TestViewer {
    let mut v = TestViewer::connect(addr, MODERN, None).await;
    assert_eq!(v.name, format!("{name} \u{2014} console"));
    v.until("the console", is_console).await;
    type_line(&mut v, "echo $((6*7))").await;
    v.until("the shell's answer", |v| shows(v, "42") == 1).await;
    v
}

#[tokio::test]
async fn domains_of_the_simulated_host_come_and_go_with_their_consoles() {
    let Some(exe) = xenvt_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(&exe, dir.path());
    let vm1 = sim.create("vm1");

    let xs = sim.dir.join("dom0/xenstored.sock");
    let mut p = Proxy::start_env(
        dir.path(),
        "[viewer]\nport_base = 0\n[xenstore]\nenabled = true\ndomains = true\n",
        &[("XENSTORED_PATH", &xs)],
    );
    let addr1 = p.wait_viewers(vm1);
    let mut v1 = shell_answers(&addr1, "vm1").await;

    // vm1 is destroyed: its viewer is disconnected and its port closed.
    sim.ctl(&["destroy", "vm1"]);
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            if v1.rd.server_event(&mut v1.dec).await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "vm1's viewer stayed connected");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::net::TcpStream::connect(&addr1).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "vm1's viewer port stayed open"
        );
        // The listener closes in the same teardown as the viewer; give it a moment.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // vm2 is created: it gets a port and a working console.
    let vm2 = sim.create("vm2");
    assert_ne!(vm2, vm1);
    let addr2 = p.wait_viewers(vm2);
    shell_answers(&addr2, "vm2").await;
}
