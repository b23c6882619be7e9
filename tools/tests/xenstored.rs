//! The simulated xenstored driven by real clients: Debian's `xenstore-utils`
//! (libxenstore) and the `xenstore-rs` async client, plus raw wire writes.
//!
//! The `xenstore-*` tools need nothing special to use the socket: libxenstore
//! opens the unix socket named by `XENSTORED_PATH` first and only falls back
//! to the xenbus device when that fails. They are found on `PATH`
//! (package `xenstore-utils`); the tests that use them fail loudly if absent.
//! The `xenstore-rs` client is exercised in `xenstored_rs.rs`, its own test
//! binary, because it only takes the socket path from the environment.

use std::path::{Path, PathBuf};
use std::process::Output;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use xenvt::sim::xenstored::wire::{self, MsgType};
use xenvt::sim::xenstored::{Xenstored, XenstoredConfig};

struct Sim {
    dir: tempfile::TempDir,
    xsd: Xenstored,
}

impl Sim {
    fn new(cfg: XenstoredConfig) -> Self {
        let sim = Sim {
            dir: tempfile::tempdir().unwrap(),
            xsd: Xenstored::new(cfg),
        };
        sim.listen(0);
        sim
    }

    fn sock(&self, domid: u32) -> PathBuf {
        self.dir.path().join(format!("xs-{domid}.sock"))
    }

    /// Serves a socket acting as `domid`; the task ends when it is released.
    fn listen(&self, domid: u32) -> tokio::task::JoinHandle<std::io::Result<()>> {
        let l = UnixListener::bind(self.sock(domid)).unwrap();
        let xsd = self.xsd.clone();
        tokio::spawn(async move { xsd.serve(l, domid).await })
    }

    async fn guest(&self, domid: u32, name: &str) -> tokio::task::JoinHandle<std::io::Result<()>> {
        self.xsd.introduce_domain(domid, name).unwrap();
        self.listen(domid)
    }

    async fn tool(&self, domid: u32, tool: &str, args: &[&str]) -> Output {
        tokio::process::Command::new(tool)
            .args(args)
            .env("XENSTORED_PATH", self.sock(domid))
            .output()
            .await
            .unwrap_or_else(|e| panic!("{tool}: {e} (install xenstore-utils)"))
    }

    async fn tool_ok(&self, domid: u32, tool: &str, args: &[&str]) -> String {
        let o = self.tool(domid, tool, args).await;
        assert!(
            o.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

/// A raw wire client for what the libraries do not expose.
struct Raw {
    s: UnixStream,
    next: u32,
    events: Vec<(String, String)>,
}

impl Raw {
    async fn connect(p: &Path) -> Self {
        Raw {
            s: UnixStream::connect(p).await.unwrap(),
            next: 1,
            events: Vec::new(),
        }
    }

    async fn read_frame(&mut self) -> Option<(u32, u32, u32, Vec<u8>)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).await.ok()?;
        let hd = wire::Header::parse(&h);
        let mut body = vec![0; hd.len as usize];
        self.s.read_exact(&mut body).await.ok()?;
        Some((hd.ty, hd.req_id, hd.tx_id, body))
    }

    /// Sends a request and returns the reply (type, payload), keeping any
    /// watch events that arrive first.
    async fn req(&mut self, ty: MsgType, tx: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let id = self.next;
        self.next += 1;
        self.s
            .write_all(&wire::encode(ty, id, tx, payload))
            .await
            .unwrap();
        self.reply(id, tx).await
    }

    async fn reply(&mut self, id: u32, tx: u32) -> (u32, Vec<u8>) {
        loop {
            let (t, rid, rtx, body) = self.read_frame().await.expect("connection closed");
            if t == MsgType::WatchEvent as u32 {
                let v = wire::strings(&body);
                self.events.push((
                    String::from_utf8_lossy(v[0]).into_owned(),
                    String::from_utf8_lossy(v[1]).into_owned(),
                ));
                continue;
            }
            assert_eq!((rid, rtx), (id, tx), "reply echoes req_id and tx_id");
            return (t, body);
        }
    }

    async fn ok(&mut self, ty: MsgType, tx: u32, payload: &[u8]) -> Vec<u8> {
        let (t, b) = self.req(ty, tx, payload).await;
        assert_eq!(t, ty as u32, "{ty:?} failed: {}", String::from_utf8_lossy(&b));
        b
    }

    async fn err(&mut self, ty: MsgType, tx: u32, payload: &[u8]) -> String {
        let (t, b) = self.req(ty, tx, payload).await;
        assert_eq!(t, MsgType::Error as u32, "{ty:?} should fail");
        assert_eq!(b.last(), Some(&0), "error names end in NUL");
        String::from_utf8(b[..b.len() - 1].to_vec()).unwrap()
    }

    async fn write(&mut self, tx: u32, path: &str, val: &str) {
        self.ok(MsgType::Write, tx, format!("{path}\0{val}").as_bytes())
            .await;
    }

    async fn read(&mut self, tx: u32, path: &str) -> Result<String, String> {
        let (t, b) = self.req(MsgType::Read, tx, &z(path)).await;
        if t == MsgType::Read as u32 {
            Ok(String::from_utf8(b).unwrap())
        } else {
            Err(String::from_utf8_lossy(&b[..b.len() - 1]).into_owned())
        }
    }

    async fn watch(&mut self, path: &str, token: &str) {
        self.ok(MsgType::Watch, 0, format!("{path}\0{token}\0").as_bytes())
            .await;
    }

    async fn start(&mut self) -> u32 {
        let b = self.ok(MsgType::TransactionStart, 0, b"\0").await;
        std::str::from_utf8(&b[..b.len() - 1]).unwrap().parse().unwrap()
    }

    /// Reads until EOF; returns the bytes seen.
    async fn drain(&mut self) -> usize {
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        loop {
            match self.s.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    }
}

fn z(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn small() -> XenstoredConfig {
    XenstoredConfig::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utils_read_write_ls_rm() {
    let sim = Sim::new(small());
    assert_eq!(
        sim.tool_ok(0, "xenstore-read", &["/local/domain/0/name"]).await,
        "Domain-0\n"
    );
    assert_eq!(sim.tool_ok(0, "xenstore-read", &["domid"]).await, "0\n");
    sim.tool_ok(0, "xenstore-write", &["/test/a/b", "hello", "/test/c", "x y"])
        .await;
    assert_eq!(sim.tool_ok(0, "xenstore-read", &["/test/a/b"]).await, "hello\n");
    assert_eq!(sim.tool_ok(0, "xenstore-list", &["/test"]).await, "a\nc\n");
    let ls = sim.tool_ok(0, "xenstore-ls", &["/test"]).await;
    assert!(ls.contains("a = \"\""), "{ls}");
    assert!(ls.contains(" b = \"hello\""), "{ls}");
    assert!(ls.contains("c = \"x y\""), "{ls}");
    sim.tool_ok(0, "xenstore-rm", &["/test/a"]).await;
    assert!(!sim.tool(0, "xenstore-exists", &["/test/a/b"]).await.status.success());
    assert!(sim.tool(0, "xenstore-exists", &["/test/c"]).await.status.success());
    // Invalid names are refused.
    assert!(!sim.tool(0, "xenstore-write", &["/bad//path", "1"]).await.status.success());
}

