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

/// Watch events as (path, token), from literals.
fn events(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

impl Raw {
    /// The watch events seen since the last call.
    fn take_events(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.events)
    }

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
        assert_eq!(
            t,
            ty as u32,
            "{ty:?} failed: {}",
            String::from_utf8_lossy(&b)
        );
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
        std::str::from_utf8(&b[..b.len() - 1])
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The next watch event's path (events kept by `req` first).
    async fn next_event(&mut self) -> String {
        if !self.events.is_empty() {
            return self.events.remove(0).0;
        }
        let (t, _, _, body) = self.read_frame().await.expect("connection closed");
        assert_eq!(t, MsgType::WatchEvent as u32, "only events were due");
        String::from_utf8_lossy(wire::strings(&body)[0]).into_owned()
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
        sim.tool_ok(0, "xenstore-read", &["/local/domain/0/name"])
            .await,
        "Domain-0\n"
    );
    assert_eq!(sim.tool_ok(0, "xenstore-read", &["domid"]).await, "0\n");
    sim.tool_ok(
        0,
        "xenstore-write",
        &["/test/a/b", "hello", "/test/c", "x y"],
    )
    .await;
    assert_eq!(
        sim.tool_ok(0, "xenstore-read", &["/test/a/b"]).await,
        "hello\n"
    );
    assert_eq!(sim.tool_ok(0, "xenstore-list", &["/test"]).await, "a\nc\n");
    let ls = sim.tool_ok(0, "xenstore-ls", &["/test"]).await;
    assert!(ls.contains("a = \"\""), "{ls}");
    assert!(ls.contains(" b = \"hello\""), "{ls}");
    assert!(ls.contains("c = \"x y\""), "{ls}");
    sim.tool_ok(0, "xenstore-rm", &["/test/a"]).await;
    assert!(!sim
        .tool(0, "xenstore-exists", &["/test/a/b"])
        .await
        .status
        .success());
    assert!(sim
        .tool(0, "xenstore-exists", &["/test/c"])
        .await
        .status
        .success());
    // Invalid names are refused.
    assert!(!sim
        .tool(0, "xenstore-write", &["/bad//path", "1"])
        .await
        .status
        .success());
}

async fn perms_of(raw: &mut Raw, path: &str) -> Vec<String> {
    let b = raw.ok(MsgType::GetPerms, 0, &z(path)).await;
    wire::strings(&b)
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_permissions() {
    let sim = Sim::new(small());
    sim.guest(5, "guest5").await;
    sim.guest(6, "guest6").await;
    let mut d0 = Raw::connect(&sim.sock(0)).await;
    // libxl's layout: the home is dom0's and readable by the guest; data/ is
    // the guest's.
    assert_eq!(perms_of(&mut d0, "/local/domain/5").await, ["n0", "r5"]);
    assert_eq!(perms_of(&mut d0, "/local/domain/5/data").await, ["n5"]);
    assert_eq!(
        sim.tool_ok(0, "xenstore-read", &["/local/domain/5/name"])
            .await,
        "guest5\n"
    );
    assert_eq!(
        sim.tool_ok(0, "xenstore-read", &["/local/domain/5/domid"])
            .await,
        "5\n"
    );

    // The guest writes its own data/ (relative and absolute paths) and owns
    // what it creates there.
    sim.tool_ok(5, "xenstore-write", &["data/x", "1"]).await;
    sim.tool_ok(5, "xenstore-write", &["/local/domain/5/data/y/z", "2"])
        .await;
    assert_eq!(
        sim.tool_ok(0, "xenstore-read", &["/local/domain/5/data/x"])
            .await,
        "1\n"
    );
    assert_eq!(perms_of(&mut d0, "/local/domain/5/data/y/z").await, ["n5"]);
    assert_eq!(sim.tool_ok(5, "xenstore-read", &["name"]).await, "guest5\n");

    let mut g5 = Raw::connect(&sim.sock(5)).await;
    // Not another domain's nodes, not dom0's, not its own read-only ones.
    assert_eq!(
        g5.err(MsgType::Write, 0, b"/local/domain/6/data/x\0v")
            .await,
        "EACCES"
    );
    assert_eq!(g5.err(MsgType::Write, 0, b"name\0evil").await, "EACCES");
    assert_eq!(
        g5.err(MsgType::Rm, 0, b"/local/domain/6/data\0").await,
        "EACCES"
    );
    assert_eq!(
        g5.read(0, "/local/domain/0/name").await,
        Err("EACCES".into())
    );
    assert_eq!(
        g5.read(0, "/local/domain/6/name").await,
        Err("EACCES".into())
    );
    // A missing node under an unreadable parent does not reveal itself...
    assert_eq!(
        g5.read(0, "/local/domain/0/nope").await,
        Err("EACCES".into())
    );
    // ...but under a readable one it is plainly missing.
    assert_eq!(g5.read(0, "data/nope").await, Err("ENOENT".into()));
    assert!(!sim
        .tool(5, "xenstore-write", &["/local/domain/6/data/x", "1"])
        .await
        .status
        .success());
    // Owners cannot give nodes away; only dom0 can.
    assert_eq!(
        g5.err(MsgType::SetPerms, 0, b"data/x\0n6\0").await,
        "EINVAL"
    );
    g5.ok(MsgType::SetPerms, 0, b"data/x\0n5\0r6\0").await;

    // dom0 grants guest 5 read access to one of its nodes with xenstore-chmod.
    sim.tool_ok(0, "xenstore-write", &["/shared/k", "v"]).await;
    assert_eq!(g5.read(0, "/shared/k").await, Err("EACCES".into()));
    sim.tool_ok(0, "xenstore-chmod", &["/shared/k", "n0", "r5"])
        .await;
    assert_eq!(g5.read(0, "/shared/k").await, Ok("v".into()));
    assert_eq!(g5.err(MsgType::Write, 0, b"/shared/k\0w").await, "EACCES");
    sim.tool_ok(0, "xenstore-chmod", &["/shared/k", "n0", "b5"])
        .await;
    g5.write(0, "/shared/k", "w").await;
    assert_eq!(perms_of(&mut d0, "/shared/k").await, ["n0", "b5"]);
    // Unprivileged operations are refused.
    assert_eq!(
        g5.err(MsgType::Introduce, 0, b"9\x000\x001\0").await,
        "EACCES"
    );
    assert_eq!(g5.err(MsgType::Release, 0, b"6\0").await, "EACCES");
    // A grant naming a domain that does not exist grants nothing later on.
    sim.tool_ok(0, "xenstore-chmod", &["/shared/k", "n0", "r8"])
        .await;
    sim.guest(8, "late").await;
    let mut g8 = Raw::connect(&sim.sock(8)).await;
    assert_eq!(g8.read(0, "/shared/k").await, Err("EACCES".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_domain_events() {
    let sim = Sim::new(small());
    let mut d0 = Raw::connect(&sim.sock(0)).await;
    d0.watch("@introduceDomain", "intro").await;
    d0.watch("@releaseDomain", "rel").await;
    d0.watch("/local/domain", "dom").await;
    sim.guest(5, "g").await;
    let mut g5 = Raw::connect(&sim.sock(5)).await;
    // Relative watch, reported relative; every watch fires once at
    // registration, even a special one the guest may not otherwise see.
    g5.watch("data", "t").await;
    g5.watch("@releaseDomain", "rel").await;
    g5.read(0, "name").await.unwrap();
    assert_eq!(
        g5.take_events(),
        events(&[("data", "t"), ("@releaseDomain", "rel")])
    );

    sim.tool_ok(0, "xenstore-write", &["/local/domain/5/data/a/b", "1"])
        .await;
    sim.tool_ok(0, "xenstore-write", &["/local/domain/5/name", "n"])
        .await;
    g5.read(0, "name").await.unwrap();
    assert_eq!(
        g5.take_events(),
        events(&[("data/a", "t"), ("data/a/b", "t")])
    );

    // RM: a watch on a removed descendant fires with its own path; watches
    // at or above the removed node fire once with the removed node's path.
    g5.watch("data/a/b", "deep").await;
    sim.tool_ok(0, "xenstore-rm", &["/local/domain/5/data/a"])
        .await;
    g5.read(0, "name").await.unwrap();
    assert_eq!(
        g5.take_events(),
        events(&[("data/a/b", "deep"), ("data/a/b", "deep"), ("data/a", "t")])
    );

    // Duplicate watch and unknown unwatch.
    assert_eq!(g5.err(MsgType::Watch, 0, b"data\0t\0").await, "EEXIST");
    assert_eq!(g5.err(MsgType::Unwatch, 0, b"data\0nope\0").await, "ENOENT");
    g5.ok(MsgType::Unwatch, 0, b"data\0t\0").await;

    // Releasing a domain: dom0 hears @releaseDomain, the guest watching it
    // does not (the special node is dom0-only until dom0 grants read).
    sim.guest(7, "other").await;
    sim.xsd.release_domain(7).unwrap();
    g5.read(0, "name").await.unwrap();
    assert!(
        !g5.events.iter().any(|e| e.0 == "@releaseDomain"),
        "{:?}",
        g5.events
    );
    sim.tool_ok(0, "xenstore-chmod", &["@releaseDomain", "n0", "r5"])
        .await;
    sim.guest(9, "third").await;
    sim.xsd.release_domain(9).unwrap();
    g5.read(0, "name").await.unwrap();
    assert!(
        g5.events.contains(&("@releaseDomain".into(), "rel".into())),
        "{:?}",
        g5.events
    );

    d0.read(0, "/").await.unwrap();
    let ev = &d0.events;
    let count = |p: &str| ev.iter().filter(|e| e.0 == p).count();
    // One at registration, then one per introduce / release.
    assert_eq!(count("@introduceDomain"), 1 + 3);
    assert_eq!(count("@releaseDomain"), 1 + 2);
    assert!(ev.contains(&("/local/domain/7".into(), "dom".into())));
    assert!(
        sim.tool(0, "xenstore-exists", &["/local/domain/7"])
            .await
            .status
            .code()
            != Some(0)
    );

    // xenstore-watch (libxenstore's watch thread) sees the first event.
    let out = sim
        .tool_ok(0, "xenstore-watch", &["-n", "1", "/local/domain/5"])
        .await;
    assert_eq!(out.trim(), "/local/domain/5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions() {
    let sim = Sim::new(small());
    let mut a = Raw::connect(&sim.sock(0)).await;
    let mut b = Raw::connect(&sim.sock(0)).await;
    a.write(0, "/t/x", "0").await;
    a.watch("/t", "w").await;

    // Isolation, then a clean commit whose watch events fire at commit.
    let t = a.start().await;
    a.write(t, "/t/y", "1").await;
    assert_eq!(a.read(t, "/t/y").await, Ok("1".into()));
    assert_eq!(b.read(0, "/t/y").await, Err("ENOENT".into()));
    a.events.clear();
    a.ok(MsgType::TransactionEnd, t, b"T\0").await;
    assert_eq!(b.read(0, "/t/y").await, Ok("1".into()));
    a.read(0, "/").await.unwrap();
    assert!(a.events.contains(&("/t/y".into(), "w".into())));

    // Conflict: what the transaction read changed meanwhile.
    let t = a.start().await;
    assert_eq!(a.read(t, "/t/x").await, Ok("0".into()));
    a.write(t, "/t/z", "1").await;
    b.write(0, "/t/x", "changed").await;
    assert_eq!(a.err(MsgType::TransactionEnd, t, b"T\0").await, "EAGAIN");
    assert_eq!(b.read(0, "/t/z").await, Err("ENOENT".into()));
    // The id is gone after END.
    assert_eq!(a.err(MsgType::Read, t, b"/t/x\0").await, "ENOENT");

    // Abort discards; unrelated changes do not conflict.
    let t = a.start().await;
    a.write(t, "/t/z", "1").await;
    b.write(0, "/other", "1").await;
    a.ok(MsgType::TransactionEnd, t, b"F\0").await;
    assert_eq!(b.read(0, "/t/z").await, Err("ENOENT".into()));
    let t = a.start().await;
    a.read(t, "/t/x").await.unwrap();
    b.write(0, "/other", "2").await;
    a.write(t, "/t/z", "2").await;
    a.ok(MsgType::TransactionEnd, t, b"T\0").await;
    assert_eq!(b.read(0, "/t/z").await, Ok("2".into()));

    // Bad END argument, unknown id, nested start.
    let t = a.start().await;
    assert_eq!(a.err(MsgType::TransactionEnd, t, b"X\0").await, "EINVAL");
    assert_eq!(a.err(MsgType::TransactionEnd, 999, b"T\0").await, "ENOENT");
    assert_eq!(a.err(MsgType::TransactionStart, t, b"\0").await, "EBUSY");
    // Transactions belong to their connection.
    assert_eq!(b.err(MsgType::Read, t, b"/t/x\0").await, "ENOENT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_domain_path_and_misc_ops() {
    let sim = Sim::new(small());
    sim.guest(5, "g").await;
    let mut g = Raw::connect(&sim.sock(5)).await;
    assert_eq!(
        g.ok(MsgType::GetDomainPath, 0, b"5\0").await,
        b"/local/domain/5\0"
    );
    assert_eq!(
        g.ok(MsgType::GetDomainPath, 0, b"12\0").await,
        b"/local/domain/12\0"
    );
    assert_eq!(g.err(MsgType::GetDomainPath, 0, b"5").await, "EINVAL");
    let dir = g.ok(MsgType::Directory, 0, b"control\0").await;
    let names: Vec<_> = wire::strings(&dir)
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    assert!(names.contains(&"shutdown".to_string()), "{names:?}");
    // DIRECTORY_PART: generation, then the names, then an empty string.
    let part = g.ok(MsgType::DirectoryPart, 0, b"control\x000\0").await;
    assert!(part.ends_with(b"\0\0"));
    assert!(part.windows(9).any(|w| w == b"shutdown\0"));
    // RESET_WATCHES drops watches and transactions.
    g.watch("data", "t").await;
    let t = g.start().await;
    g.ok(MsgType::ResetWatches, 0, b"\0").await;
    assert_eq!(g.err(MsgType::Read, t, b"data\0").await, "ENOENT");
    assert_eq!(g.err(MsgType::Unwatch, 0, b"data\0t\0").await, "ENOENT");
    // Removing the root is refused; removing a missing child is fine.
    let mut d0 = Raw::connect(&sim.sock(0)).await;
    assert_eq!(d0.err(MsgType::Rm, 0, b"/\0").await, "EINVAL");
    d0.ok(MsgType::Rm, 0, b"/nothere\0").await;
    assert_eq!(d0.err(MsgType::Rm, 0, b"/no/parent\0").await, "ENOENT");
    assert_eq!(d0.ok(MsgType::IsDomainIntroduced, 0, b"5\0").await, b"T\0");
    assert_eq!(d0.ok(MsgType::IsDomainIntroduced, 0, b"77\0").await, b"F\0");
    // Pids come from SO_PEERCRED: this process is connected as domain 5.
    assert_eq!(sim.xsd.pids(5), vec![std::process::id() as i32]);
    let st = sim.xsd.stats();
    assert_eq!(st.domains[&5].connections, 1);
    assert!(st.domains[&5].nodes > 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas() {
    let cfg = XenstoredConfig {
        nodes_per_domain: 20,
        watches_per_domain: 3,
        transactions_per_conn: 2,
        conns_per_domain: 2,
        ..XenstoredConfig::default()
    };
    let sim = Sim::new(cfg);
    sim.guest(5, "g").await;
    let mut g = Raw::connect(&sim.sock(5)).await;
    let mut d0 = Raw::connect(&sim.sock(0)).await;
    // Nodes: the toolstack's guest-owned nodes count too.
    let mut made = 0;
    let err = loop {
        let (t, b) = g
            .req(MsgType::Write, 0, format!("data/n{made}\0v").as_bytes())
            .await;
        if t == MsgType::Error as u32 {
            break String::from_utf8_lossy(&b[..b.len() - 1]).into_owned();
        }
        made += 1;
        assert!(made < 100, "no node quota");
    };
    assert_eq!(err, "ENOSPC");
    assert_eq!(sim.xsd.stats().domains[&5].nodes, 20);
    // dom0 is not limited.
    for i in 0..30 {
        d0.write(0, &format!("/big/n{i}"), "v").await;
    }
    g.ok(MsgType::Rm, 0, b"data/n0\0").await;

    // Node size: value plus record overhead must stay under 2048.
    assert_eq!(
        g.err(
            MsgType::Write,
            0,
            &[&b"data/n1\0"[..], &[b'a'; 2040]].concat()
        )
        .await,
        "ENOSPC"
    );
    g.ok(
        MsgType::Write,
        0,
        &[&b"data/n1\0"[..], &[b'a'; 2000]].concat(),
    )
    .await;
    d0.write(0, "/big/n0", &"a".repeat(4000)).await;

    // Watches: checked with `>` before adding, as xenstored does.
    for i in 0..4 {
        g.watch(&format!("data/w{i}"), "t").await;
    }
    assert_eq!(g.err(MsgType::Watch, 0, b"data/w9\0t\0").await, "E2BIG");

    // Transactions per connection.
    for _ in 0..3 {
        g.start().await;
    }
    assert_eq!(g.err(MsgType::TransactionStart, 0, b"\0").await, "ENOSPC");

    // Connections per guest: the third is closed at once.
    let mut g2 = Raw::connect(&sim.sock(5)).await;
    assert_eq!(g2.read(0, "name").await, Ok("g".into()));
    let mut g3 = Raw::connect(&sim.sock(5)).await;
    assert_eq!(g3.drain().await, 0);

    // Path length below the home, and permission entries per node.
    let long = format!("data/{}\0v", "a".repeat(2100));
    assert_eq!(g.err(MsgType::Write, 0, long.as_bytes()).await, "EINVAL");
    assert_eq!(
        g.err(MsgType::SetPerms, 0, b"data/n1\0n5\0r1\0r2\0r3\0r4\0r6\0")
            .await,
        "ENOSPC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_contained() {
    let sim = Sim::new(small());
    sim.guest(5, "g").await;
    let mut good = Raw::connect(&sim.sock(0)).await;
    good.write(0, "/k", "v").await;

    // A length over the limit: disconnected at once.
    let mut bad = Raw::connect(&sim.sock(5)).await;
    let mut h = wire::encode(MsgType::Read, 1, 0, b"");
    h[12..16].copy_from_slice(&5000u32.to_ne_bytes());
    bad.s.write_all(&h).await.unwrap();
    assert_eq!(bad.drain().await, 0);

    // Unknown and reply-only types get ENOSYS; the connection lives on.
    let mut odd = Raw::connect(&sim.sock(5)).await;
    for ty in [
        999u32,
        MsgType::WatchEvent as u32,
        MsgType::Error as u32,
        0xffff,
    ] {
        let mut f = wire::encode(MsgType::Read, 7, 0, b"x\0");
        f[0..4].copy_from_slice(&ty.to_ne_bytes());
        odd.s.write_all(&f).await.unwrap();
        let (t, body) = odd.reply(7, 0).await;
        assert_eq!(
            (t, body.as_slice()),
            (MsgType::Error as u32, &b"ENOSYS\0"[..])
        );
    }
    // Missing NUL, extra NUL, non-UTF-8, empty: EINVAL.
    assert_eq!(odd.err(MsgType::Read, 0, b"data").await, "EINVAL");
    assert_eq!(odd.err(MsgType::Read, 0, b"data\0\0").await, "EINVAL");
    assert_eq!(odd.err(MsgType::Read, 0, b"\xff\xfe\0").await, "EINVAL");
    assert_eq!(odd.err(MsgType::Read, 0, b"").await, "EINVAL");
    assert_eq!(odd.err(MsgType::Write, 0, b"").await, "EINVAL");
    assert_eq!(odd.err(MsgType::Watch, 0, b"onlyone\0").await, "EINVAL");
    assert_eq!(odd.err(MsgType::SetPerms, 0, b"data\0q5\0").await, "EINVAL");
    assert_eq!(odd.read(0, "name").await, Ok("g".into()));

    // Random garbage on many connections; then the store still answers.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20 {
        let mut c = UnixStream::connect(sim.sock(5)).await.unwrap();
        let mut junk = vec![0u8; 3000];
        for b in junk.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let _ = c.write_all(&junk).await;
        let _ = c.shutdown().await;
        let mut sink = Vec::new();
        let _ = c.read_to_end(&mut sink).await;
    }
    assert_eq!(good.read(0, "/k").await, Ok("v".into()));
    assert_eq!(sim.tool_ok(0, "xenstore-read", &["/k"]).await, "v\n");
}

/// As C xenstored: a dom0 client that reads slowly keeps its connection and
/// gets every distinct event, in order; repeats of an event still queued are
/// merged into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_dom0_reader_keeps_everything_but_repeats() {
    let sim = Sim::new(XenstoredConfig::default());
    let mut d0 = Raw::connect(&sim.sock(0)).await;
    d0.write(0, "/flood", "").await;
    let mut slow = Raw::connect(&sim.sock(0)).await;
    slow.watch("/flood", "t").await;
    // 2 MB of distinct events: far more than a socket buffer holds, so the
    // later ones wait in the daemon's queue.
    let long = "a".repeat(1000);
    let n = 2000;
    for i in 0..n {
        d0.write(0, &format!("/flood/{i}{long}"), "").await;
    }
    for _ in 0..500 {
        d0.write(0, "/flood/same", "x").await;
    }
    d0.write(0, "/flood/end", "").await;
    let st = sim.xsd.stats().domains[&0].clone();
    assert_eq!(st.connections, 2, "{st:?}");
    assert_eq!(st.events_merged, 499, "{st:?}");
    assert_eq!(st.events_dropped, 0, "{st:?}");

    assert_eq!(slow.next_event().await, "/flood");
    for i in 0..n {
        assert_eq!(slow.next_event().await, format!("/flood/{i}{long}"));
    }
    assert_eq!(slow.next_event().await, "/flood/same");
    assert_eq!(slow.next_event().await, "/flood/end");
    assert_eq!(sim.xsd.stats().domains[&0].queued_bytes, 0);
}

/// As C xenstored: a guest that reads slowly loses the watch events over
/// its domain's quota, not its connection, and dom0 is never held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_guest_reader_loses_events_over_quota() {
    let quota = 32 * 1024;
    let sim = Sim::new(XenstoredConfig {
        domain_quota: quota,
        ..XenstoredConfig::default()
    });
    let _served = sim.guest(5, "g").await;
    let mut g = Raw::connect(&sim.sock(5)).await;
    g.watch("data", "t").await;
    let mut d0 = Raw::connect(&sim.sock(0)).await;
    let long = "b".repeat(1000);
    let n = 2000;
    for i in 0..n {
        d0.write(0, &format!("/local/domain/5/data/{i}{long}"), "")
            .await;
    }
    let st = sim.xsd.stats().domains[&5].clone();
    assert_eq!(st.connections, 1, "{st:?}");
    assert!(st.events_dropped > 0, "{st:?}");
    assert!(st.queued_bytes <= quota, "{st:?}");
    // The guest is still served once it reads what was kept for it.
    assert_eq!(g.read(0, "name").await, Ok("g".into()));
    let kept = g.events.len();
    assert!(kept > 1 && kept < n, "{kept}");
    assert_eq!(g.events[0].0, "data");
    let st = sim.xsd.stats().domains[&5].clone();
    assert_eq!(st.events_dropped as usize + kept, n + 1, "{st:?}");
}

/// As C xenstored: a guest's request stays outstanding until the watch
/// events it caused are read, even by dom0; with 20 outstanding the guest
/// waits, and dom0 does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_writes_wait_for_a_slow_watcher() {
    let sim = Sim::new(XenstoredConfig::default());
    let _served = sim.guest(5, "g").await;
    let mut d0 = Raw::connect(&sim.sock(0)).await;
    d0.write(0, "/flood", "").await;
    let mut slow = Raw::connect(&sim.sock(0)).await;
    slow.watch("/flood", "f").await;
    slow.watch("/local/domain/5/data", "t").await;
    // Fill the slow reader's socket with events no guest caused.
    let long = "a".repeat(1000);
    for i in 0..2000 {
        d0.write(0, &format!("/flood/{i}{long}"), "").await;
    }
    // The guest sends 100 writes at once.
    let mut g = Raw::connect(&sim.sock(5)).await;
    let n = 100u32;
    let mut burst = Vec::new();
    for i in 0..n {
        burst.extend(wire::encode(
            MsgType::Write,
            i + 1,
            0,
            format!("data/k{i}\0v").as_bytes(),
        ));
    }
    g.s.write_all(&burst).await.unwrap();
    // dom0 goes on, and sees at most 20 of them done.
    let done = d0
        .ok(MsgType::Directory, 0, &z("/local/domain/5/data"))
        .await;
    let done = wire::strings(&done).len();
    assert!(done <= 20, "{done}");
    assert!(sim.xsd.stats().domains[&5].outstanding <= 20);
    // Once the watcher reads, every write goes through.
    while slow.next_event().await != format!("/local/domain/5/data/k{}", n - 1) {}
    for i in 0..n {
        assert_eq!(g.reply(i + 1, 0).await.0, MsgType::Write as u32);
    }
}

/// A dom0 client that does not read at all is closed past the simulation's
/// own bound (the C daemon would let its queue grow); the writer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_dom0_reader_hits_the_sim_bound() {
    let cfg = XenstoredConfig {
        out_queue_max: 64 * 1024,
        ..XenstoredConfig::default()
    };
    let sim = Sim::new(cfg);
    let mut slow = Raw::connect(&sim.sock(0)).await;
    slow.watch("/flood", "t").await;
    let mut d0 = Raw::connect(&sim.sock(0)).await;
    let long = "a".repeat(1500);
    // Enough events to fill the socket buffers and the bounded queue.
    for i in 0..2000 {
        d0.write(0, &format!("/flood/{long}/{i}"), "").await;
    }
    // The writer keeps working and the slow peer is cut off: its stream ends
    // after a bounded amount of data.
    let got = slow.drain().await;
    assert!(got < 8 * 1024 * 1024, "{got}");
    assert_eq!(sim.xsd.stats().domains[&0].connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_closes_guest() {
    let sim = Sim::new(small());
    let served = sim.guest(5, "g").await;
    let mut g = Raw::connect(&sim.sock(5)).await;
    g.write(0, "data/x", "1").await;
    g.watch("data", "t").await;
    let t = g.start().await;
    let _ = t;
    assert_eq!(sim.xsd.stats().domains[&5].watches, 1);
    sim.xsd.release_domain(5).unwrap();
    assert_eq!(g.drain().await, 0);
    served.await.unwrap().unwrap();
    let st = sim.xsd.stats();
    assert!(!st.domains.contains_key(&5), "{st:?}");
    assert!(sim.xsd.pids(5).is_empty());
    assert!(sim.xsd.release_domain(5).is_err());
    assert!(sim.xsd.introduce_domain(0, "x").is_err());
}
