//! The daemons' control endpoint: a small, bounded HTTP/1.x responder on a
//! unix socket (root-only) or a loopback TCP port, answering `GET /metrics`
//! (Prometheus text format) and `GET /status` (JSON), and the text encoder for
//! the metrics.
//!
//! It is dom0-local and root-only, and still treats a client as untrusted: one
//! request per connection, its head capped at [`MAX_REQUEST`] bytes and
//! [`TIMEOUT`] to arrive and be answered, and at most [`MAX_CONNS`] at once
//! (more are closed at once). docs/dependencies.md says why this is not hyper.

use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

/// Largest request head accepted.
pub const MAX_REQUEST: usize = 8 << 10;
/// How long a client has to send its request and take the answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNS: usize = 16;

/// The Prometheus text format's content type.
pub const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// JSON.
pub const JSON_TYPE: &str = "application/json";

/// What a daemon answers on its control endpoint.
pub trait Handler: Send + Sync + 'static {
    /// The body and content type for `GET path`, or `None` for 404.
    fn get(&self, path: &str) -> Option<(&'static str, String)>;
}

/// The socket file, removed when dropped (on a clean exit).
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a unix socket at `path` with mode 0600. It is bound inside a fresh
/// 0700 directory, chmodded, then renamed into place, so nobody else can
/// connect in between. A stale socket left by a crash is replaced; a live one
/// (another daemon answering) is an error.
pub fn bind_unix(path: &Path) -> io::Result<(UnixListener, SocketFile)> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use by a running daemon", path.display()),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
    let inner = tmp.join("s");
    let r = (|| -> io::Result<UnixListener> {
        let l = UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    Ok((r?, SocketFile(path.to_owned())))
}

/// Checks that a TCP control address is loopback: the endpoint has no
/// authentication of its own.
pub fn check_tcp(addr: std::net::SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!("{addr} is not a loopback address"))
    }
}

/// Serves `l` until the future is dropped.
pub async fn serve_unix(l: UnixListener, h: Arc<dyn Handler>) {
    let l = &l;
    serve(|| async move { l.accept().await.map(|(s, _)| s) }, h).await
}

/// Serves a loopback TCP listener until the future is dropped.
pub async fn serve_tcp(l: TcpListener, h: Arc<dyn Handler>) {
    let l = &l;
    serve(|| async move { l.accept().await.map(|(s, _)| s) }, h).await
}

/// Answers what `accept` yields, at most [`MAX_CONNS`] at once.
async fn serve<S, F, A>(mut accept: F, h: Arc<dyn Handler>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> A,
    A: std::future::Future<Output = io::Result<S>>,
{
    let sem = Arc::new(Semaphore::new(MAX_CONNS));
    loop {
        let Ok(s) = accept().await else {
            // Out of fds and the like: pause instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        spawn_conn(s, &sem, &h);
    }
}

fn spawn_conn<S>(s: S, sem: &Arc<Semaphore>, h: &Arc<dyn Handler>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Over the cap: the connection is dropped (closed) right away.
    let Ok(permit) = sem.clone().try_acquire_owned() else {
        return;
    };
    let h = h.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(TIMEOUT, answer(s, &*h)).await;
        drop(permit);
    });
}

/// Reads one request head and answers it.
pub async fn answer<S>(mut s: S, h: &dyn Handler) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (status, ctype, body): (&str, &str, String) = loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let done: Option<(&str, &str, String)> = match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                Some(match (req.method, h.get(path)) {
                    (Some("GET"), Some((t, b))) => ("200 OK", t, b),
                    (Some("GET"), None) => ("404 Not Found", "text/plain", "not found\n".into()),
                    _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
                })
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => None,
            Ok(httparse::Status::Partial) => Some((
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n".into(),
            )),
            Err(_) => Some(("400 Bad Request", "text/plain", "bad request\n".into())),
        };
        if let Some(d) = done {
            break d;
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

/// A client for `xenvt status` and tests: `GET path` on a unix socket, the
/// body of a 200 answer, at most `max` bytes.
pub async fn get_unix(sock: &Path, path: &str, max: usize) -> io::Result<String> {
    let s = tokio::net::UnixStream::connect(sock).await?;
    tokio::time::timeout(TIMEOUT, get_on(s, path, max))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

async fn get_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    path: &str,
    max: usize,
) -> io::Result<String> {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    (&mut s).take(max as u64 + 1).read_to_end(&mut out).await?;
    if out.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "answer too large",
        ));
    }
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_owned());
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&out[..split]);
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(bad(&format!("answer: {status}")));
    }
    String::from_utf8(out[split + 4..].to_vec()).map_err(|_| bad("body is not UTF-8"))
}

/// Metric kinds of the text format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (names end in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Builds a Prometheus text exposition (format 0.0.4).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// One metric family: its help, type and samples (label pairs, value).
    pub fn family<'a, I>(&mut self, name: &str, kind: Kind, help: &str, samples: I)
    where
        I: IntoIterator<Item = (&'a [(&'a str, &'a str)], u64)>,
    {
        self.head(name, kind, help);
        for (labels, v) in samples {
            self.sample(name, labels, v);
        }
    }

    /// A family of one sample without labels, such as a count of domains.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: u64) {
        self.family(name, kind, help, [(&[][..], value)]);
    }

    /// Families with a sample per domain of `rows`, labelled `domid` and
    /// `name` as `key` gives them: both daemons label their domains alike.
    pub fn per_domain<'e, 'r, T>(
        &'e mut self,
        rows: &'r [T],
        key: impl Fn(&'r T) -> (u16, &'r str),
    ) -> PerDomain<'e, 'r, T> {
        let keys = rows
            .iter()
            .map(|r| {
                let (id, name) = key(r);
                (id.to_string(), name)
            })
            .collect();
        PerDomain {
            e: self,
            rows,
            keys,
        }
    }

    fn head(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\n', " "));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {v}");
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Families over a list of domains; see [`Exposition::per_domain`].
#[derive(Debug)]
pub struct PerDomain<'e, 'r, T> {
    e: &'e mut Exposition,
    rows: &'r [T],
    /// Each row's domain id (as text) and name.
    keys: Vec<(String, &'r str)>,
}

impl<'r, T> PerDomain<'_, 'r, T> {
    /// A family with one sample per domain: `value` of its row.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str, value: impl Fn(&'r T) -> u64) {
        self.emit(name, kind, help, None, |r| [("", value(r))]);
    }

    /// A family with an extra label `label`: each domain has a sample per
    /// (label value, value) that `samples` gives for its row, or none.
    pub fn labelled<'v, I>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: &str,
        samples: impl Fn(&'r T) -> I,
    ) where
        I: IntoIterator<Item = (&'v str, u64)>,
    {
        self.emit(name, kind, help, Some(label), samples);
    }

    fn emit<'v, I>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label: Option<&str>,
        samples: impl Fn(&'r T) -> I,
    ) where
        I: IntoIterator<Item = (&'v str, u64)>,
    {
        self.e.head(name, kind, help);
        for (row, (id, dom)) in self.rows.iter().zip(&self.keys) {
            let (id, dom) = (("domid", id.as_str()), ("name", *dom));
            for (extra, v) in samples(row) {
                match label {
                    Some(l) => self.e.sample(name, &[id, dom, (l, extra)], v),
                    None => self.e.sample(name, &[id, dom], v),
                }
            }
        }
    }
}

/// The answer of a daemon whose endpoint serves `/metrics` (the text `metrics`
/// makes) and `/status` (`status` as JSON); `None` (404) for other paths.
pub fn metrics_or_status<S: serde::Serialize>(
    path: &str,
    metrics: impl FnOnce() -> String,
    status: impl FnOnce() -> S,
) -> Option<(&'static str, String)> {
    match path {
        "/metrics" => Some((METRICS_TYPE, metrics())),
        "/status" => Some((
            JSON_TYPE,
            serde_json::to_string(&status()).unwrap_or_else(|_| "{}".into()),
        )),
        _ => None,
    }
}

/// Escapes a label value (names come from guests: anything may be in them).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    struct H;
    impl Handler for H {
        fn get(&self, path: &str) -> Option<(&'static str, String)> {
            (path == "/metrics").then(|| (METRICS_TYPE, "m 1\n".to_owned()))
        }
    }

    #[test]
    fn exposition_format() {
        let mut e = Exposition::new();
        e.family(
            "xenvt_x_total",
            Kind::Counter,
            "Things.",
            [
                (&[("domid", "3"), ("name", "a\"b\\c\nd")][..], 7),
                (&[][..], 1),
            ],
        );
        assert_eq!(
            e.finish(),
            "# HELP xenvt_x_total Things.\n# TYPE xenvt_x_total counter\n\
             xenvt_x_total{domid=\"3\",name=\"a\\\"b\\\\c\\nd\"} 7\nxenvt_x_total 1\n"
        );
    }

    #[test]
    fn per_domain_families_label_every_row() {
        struct D {
            id: u16,
            name: &'static str,
            n: u64,
            why: Vec<(&'static str, u64)>,
        }
        let rows = [
            D {
                id: 1,
                name: "a",
                n: 5,
                why: vec![("io", 2), ("left", 0)],
            },
            D {
                id: 2,
                name: "b\"",
                n: 6,
                why: vec![],
            },
        ];
        let mut e = Exposition::new();
        let mut fam = e.per_domain(&rows, |d| (d.id, d.name));
        fam.family("x_n", Kind::Gauge, "N.", |d| d.n);
        fam.labelled("x_why_total", Kind::Counter, "Why.", "reason", |d| {
            d.why.iter().copied()
        });
        e.single("x_domains", Kind::Gauge, "Domains.", 2);
        assert_eq!(
            e.finish(),
            "# HELP x_n N.\n# TYPE x_n gauge\n\
             x_n{domid=\"1\",name=\"a\"} 5\nx_n{domid=\"2\",name=\"b\\\"\"} 6\n\
             # HELP x_why_total Why.\n# TYPE x_why_total counter\n\
             x_why_total{domid=\"1\",name=\"a\",reason=\"io\"} 2\n\
             x_why_total{domid=\"1\",name=\"a\",reason=\"left\"} 0\n\
             # HELP x_domains Domains.\n# TYPE x_domains gauge\nx_domains 2\n"
        );
    }

    #[test]
    fn metrics_and_status_paths() {
        let m = metrics_or_status("/metrics", || "m 1\n".into(), || [1, 2]);
        assert_eq!(m, Some((METRICS_TYPE, "m 1\n".to_owned())));
        let s = metrics_or_status("/status", String::new, || [1, 2]);
        assert_eq!(s, Some((JSON_TYPE, "[1,2]".to_owned())));
        assert_eq!(metrics_or_status("/x", String::new, || [1, 2]), None);
    }

    #[tokio::test]
    async fn socket_is_private_answers_get_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/d.ctl");
        let (l, file) = bind_unix(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second daemon on the same path is refused while the first answers.
        assert_eq!(bind_unix(&p).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let t = tokio::spawn(serve_unix(l, Arc::new(H)));
        assert_eq!(get_unix(&p, "/metrics", 1 << 20).await.unwrap(), "m 1\n");
        let e = get_unix(&p, "/nope", 1 << 20).await.unwrap_err();
        assert!(e.to_string().contains("404"), "{e}");
        t.abort();
        let _ = t.await;
        drop(file);
        assert!(!p.exists());
        // A stale socket (nobody listening) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&p).unwrap();
        drop(stale);
        let (_l, _f) = bind_unix(&p).unwrap();
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.ctl");
        let (l, _f) = bind_unix(&p).unwrap();
        let t = tokio::spawn(serve_unix(l, Arc::new(H)));
        // Idle clients hold every slot (until their timeout).
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNS {
            idle.push(tokio::net::UnixStream::connect(&p).await.unwrap());
        }
        // Accepted in order: by the time this one is looked at, the slots are taken.
        let mut over = tokio::net::UnixStream::connect(&p).await.unwrap();
        over.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.ok();
        let mut out = Vec::new();
        let r = over.read_to_end(&mut out).await;
        assert!(
            r.is_err() || out.is_empty(),
            "served beyond the cap: {out:?}"
        );
        // A client in a slot is still served.
        idle[0]
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        idle[0].read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        t.abort();
    }

    #[tokio::test]
    async fn bad_and_oversized_requests_get_errors() {
        for (req, want) in [
            (b"POST /metrics HTTP/1.1\r\n\r\n".to_vec(), "405"),
            (b"\x00\x01garbage\r\n\r\n".to_vec(), "400"),
            (
                [
                    b"GET /metrics HTTP/1.1\r\nX: ".as_slice(),
                    &[b'a'; MAX_REQUEST],
                ]
                .concat(),
                "431",
            ),
        ] {
            let (mut a, b) = tokio::io::duplex(64 << 10);
            let srv = tokio::spawn(async move { answer(b, &H).await });
            a.write_all(&req).await.unwrap();
            let mut out = String::new();
            a.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{out}");
            srv.await.unwrap().unwrap();
        }
    }
}
