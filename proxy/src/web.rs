//! Web viewers: a WebSocket endpoint for noVNC (RFB in binary frames), a status page
//! listing the domains, our small viewer page, and noVNC's own files from a directory.
//!
//! One listener serves all of it. The request head is read (bounded) and parsed here;
//! a WebSocket upgrade on `<path>/<domain>` is answered here too (echoing the `binary`
//! subprotocol when asked: Chrome fails the handshake otherwise), and then the socket is
//! handed to tungstenite for framing. The RFB session behind it is the same
//! [`run_viewer`] as on the TCP ports, VncAuth included.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, info_span, Instrument};

use crate::config::WebConfig;
use crate::daemon::Directory;
use crate::error::{Error, Result};
use crate::viewer::{run_viewer, ViewerSettings};

/// Largest request head we read.
pub const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest file served from the noVNC directory.
pub const MAX_FILE: u64 = 16 << 20;
/// Web connections served at once; more wait in the listen queue.
pub const MAX_CONNS: usize = 256;

const VIEW_HTML: &str = include_str!("../web/view.html");

/// Serves web clients on `l` forever.
pub async fn serve(
    l: TcpListener,
    cfg: WebConfig,
    dir: Arc<dyn Directory>,
    viewer: ViewerSettings,
) {
    let cfg = Arc::new(cfg);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        while conns.len() >= MAX_CONNS {
            let _ = conns.join_next().await;
        }
        let (s, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!("web accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let (cfg, dir, viewer) = (cfg.clone(), dir.clone(), viewer.clone());
        conns.spawn(
            async move {
                if let Err(e) = handle(s, &cfg, dir, &viewer).await {
                    debug!("web client: {e}");
                }
            }
            .instrument(info_span!("web", %peer)),
        );
        while conns.try_join_next().is_some() {}
    }
}

/// A parsed request head: what we need of it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
    upgrade_ws: bool,
    key: Option<String>,
    protocols: Vec<String>,
}

fn parse_head(head: &[u8]) -> Result<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Error::Refused("bad HTTP request")),
    }
    let mut r = Request {
        method: req.method.unwrap_or("").to_owned(),
        path: req.path.unwrap_or("").to_owned(),
        ..Request::default()
    };
    for h in req.headers.iter() {
        let v = String::from_utf8_lossy(h.value);
        match h.name.to_ascii_lowercase().as_str() {
            "upgrade" => r.upgrade_ws |= v.trim().eq_ignore_ascii_case("websocket"),
            "sec-websocket-key" => r.key = Some(v.trim().to_owned()),
            "sec-websocket-protocol" => r
                .protocols
                .extend(v.split(',').map(|p| p.trim().to_owned()).take(16)),
            _ => {}
        }
    }
    Ok(r)
}

async fn read_head(s: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let room = (MAX_HEAD - head.len()) as u64;
        if room == 0 {
            return Err(Error::Refused("HTTP request head too long"));
        }
        let n = (&mut *s)
            .take(room)
            .read_until(b'\n', &mut head)
            .await
            .map_err(|e| Error::io("web read", e))?;
        if n == 0 {
            return Err(Error::Refused("connection closed in the request head"));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
    }
}

async fn respond(
    s: &mut BufReader<TcpStream>,
    status: &str,
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    s.get_mut()
        .write_all(&out)
        .await
        .map_err(|e| Error::io("web write", e))
}

async fn handle(
    s: TcpStream,
    cfg: &WebConfig,
    dir: Arc<dyn Directory>,
    viewer: &ViewerSettings,
) -> Result<()> {
    let mut s = BufReader::new(s);
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut s))
        .await
        .map_err(|_| Error::Refused("no HTTP request in time"))??;
    let req = parse_head(&head)?;
    let path = req.path.split(['?', '#']).next().unwrap_or("").to_owned();
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        return respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            false,
        )
        .await;
    }
    if let Some(domain) = path
        .strip_prefix(cfg.path.as_str())
        .and_then(|r| r.strip_prefix('/'))
    {
        let domain = percent_decode(domain);
        let Some(dom) = dir.find(&domain) else {
            return respond(
                &mut s,
                "404 Not Found",
                "text/plain",
                b"no such domain\n",
                head_only,
            )
            .await;
        };
        let (true, Some(key)) = (req.upgrade_ws, req.key.as_deref()) else {
            return respond(
                &mut s,
                "426 Upgrade Required",
                "text/plain",
                b"WebSocket only\n",
                head_only,
            )
            .await;
        };
        let binary = req.protocols.iter().any(|p| p == "binary");
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n",
            derive_accept_key(key.as_bytes())
        );
        if binary {
            resp.push_str("Sec-WebSocket-Protocol: binary\r\n");
        }
        resp.push_str("\r\n");
        s.get_mut()
            .write_all(resp.as_bytes())
            .await
            .map_err(|e| Error::io("web write", e))?;
        info!(domid = dom.domid(), "web viewer connected");
        let max = viewer.limits.max_cut_text as usize + (1 << 16);
        let mut wcfg = WebSocketConfig::default();
        wcfg.max_message_size = Some(max);
        wcfg.max_frame_size = Some(max);
        let ws = WebSocketStream::from_raw_socket(s, Role::Server, Some(wcfg)).await;
        return bridge(ws, dom, viewer).await;
    }
    match path.as_str() {
        "/" | "/index.html" => {
            let body = status_page(&dir.list(), cfg.novnc_dir.is_some());
            respond(
                &mut s,
                "200 OK",
                "text/html; charset=utf-8",
                body.as_bytes(),
                head_only,
            )
            .await
        }
        "/domains.json" => {
            let body = domains_json(&dir.list());
            respond(
                &mut s,
                "200 OK",
                "application/json",
                body.as_bytes(),
                head_only,
            )
            .await
        }
        "/view.html" => {
            let page = VIEW_HTML.replace("/*WS_PATH*/\"/websockify\"", &json_string(&cfg.path));
            respond(
                &mut s,
                "200 OK",
                "text/html; charset=utf-8",
                page.as_bytes(),
                head_only,
            )
            .await
        }
        p => match (p.strip_prefix("/novnc/"), &cfg.novnc_dir) {
            (Some(rel), Some(root)) => match static_file(root, rel).await {
                Some((body, ctype)) => respond(&mut s, "200 OK", ctype, &body, head_only).await,
                None => {
                    respond(
                        &mut s,
                        "404 Not Found",
                        "text/plain",
                        b"not found\n",
                        head_only,
                    )
                    .await
                }
            },
            _ => {
                respond(
                    &mut s,
                    "404 Not Found",
                    "text/plain",
                    b"not found\n",
                    head_only,
                )
                .await
            }
        },
    }
}

/// Moves RFB bytes between the WebSocket's binary messages and a viewer session.
async fn bridge(
    ws: WebSocketStream<BufReader<TcpStream>>,
    dom: Arc<crate::domain::Domain>,
    viewer: &ViewerSettings,
) -> Result<()> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(theirs);
    let (mut sink, mut stream) = ws.split();
    let span = info_span!("domain", domid = dom.domid(), name = %dom.name());
    let session = run_viewer(dom, ours, viewer).instrument(span);
    let up = async {
        while let Some(m) = stream.next().await {
            match m.map_err(|e| Error::io("websocket", std::io::Error::other(e)))? {
                Message::Binary(b) => wr
                    .write_all(&b)
                    .await
                    .map_err(|e| Error::io("web viewer", e))?,
                Message::Close(_) => break,
                Message::Text(_) => return Err(Error::Refused("text frames carry no RFB")),
                _ => {}
            }
        }
        Ok::<(), Error>(())
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = rd
                .read(&mut buf)
                .await
                .map_err(|e| Error::io("web viewer", e))?;
            if n == 0 {
                let _ = sink.close().await;
                return Ok::<(), Error>(());
            }
            sink.send(Message::Binary(buf[..n].to_vec().into()))
                .await
                .map_err(|e| Error::io("websocket", std::io::Error::other(e)))?;
        }
    };
    tokio::select! {
        r = session => r,
        r = up => r,
        r = down => r,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "js" | "mjs" => "text/javascript",
        "html" => "text/html; charset=utf-8",
        "css" => "text/css",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

/// Reads `rel` below `root`: plain components only, no dot files, and the resolved file
/// must still be inside `root` (no symlink out of it), a regular file of bounded size.
async fn static_file(root: &Path, rel: &str) -> Option<(Vec<u8>, &'static str)> {
    let rel = percent_decode(rel);
    let rel = Path::new(&rel);
    let mut p = PathBuf::from(root);
    for c in rel.components() {
        match c {
            Component::Normal(n) if !n.to_string_lossy().starts_with('.') => p.push(n),
            _ => return None,
        }
    }
    let root = tokio::fs::canonicalize(root).await.ok()?;
    let real = tokio::fs::canonicalize(&p).await.ok()?;
    if !real.starts_with(&root) {
        return None;
    }
    let meta = tokio::fs::metadata(&real).await.ok()?;
    if !meta.is_file() || meta.len() > MAX_FILE {
        return None;
    }
    let body = tokio::fs::read(&real).await.ok()?;
    Some((body, content_type(&real)))
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn json_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '<' => o.push_str("\\u003c"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn domains_json(list: &[crate::daemon::DomainInfo]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|d| {
            format!(
                "{{\"domid\":{},\"name\":{},\"view\":{},\"viewers\":{},\"rfb\":{}}}",
                d.domid,
                json_string(&d.name),
                json_string(&d.view),
                d.viewers,
                json_string(&d.viewer_addr.to_string())
            )
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

fn status_page(list: &[crate::daemon::DomainInfo], novnc: bool) -> String {
    let mut rows = String::new();
    for d in list {
        let link = if novnc {
            format!("<a href=\"view.html?domain={}\">open</a>", d.domid)
        } else {
            "(no web viewer installed)".into()
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{link}</td></tr>\n",
            d.domid,
            html_escape(&d.name),
            html_escape(&d.view),
            d.viewers,
            html_escape(&d.viewer_addr.to_string()),
        ));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>xenvt domains</title>\
         <style>body{{font:14px sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}</style>\
         </head><body><h1>Domains</h1>\n<table><tr><th>id</th><th>name</th><th>showing</th>\
         <th>viewers</th><th>VNC</th><th>web</th></tr>\n{rows}</table></body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_parsed_and_bounded() {
        let r = parse_head(
            b"GET /websockify/vm1 HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: base64, binary\r\n\r\n",
        )
        .unwrap();
        assert!(r.upgrade_ws);
        assert_eq!(r.path, "/websockify/vm1");
        assert_eq!(r.protocols, vec!["base64", "binary"]);
        assert_eq!(
            derive_accept_key(r.key.unwrap().as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            "RFC 6455's example"
        );
        assert!(parse_head(b"GARBAGE\r\n\r\n").is_err());
    }

    #[test]
    fn escaping() {
        assert_eq!(html_escape("<a&\"'>"), "&lt;a&amp;&quot;&#39;&gt;");
        assert_eq!(json_string("a\"\\<\n"), "\"a\\\"\\\\\\u003c\\u000a\"");
        assert_eq!(percent_decode("vm%201%2"), "vm 1%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%\u{e9}x"), "%\u{e9}x");
    }

    #[tokio::test]
    async fn static_files_stay_inside_their_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("novnc");
        std::fs::create_dir_all(root.join("core")).unwrap();
        std::fs::write(root.join("core/rfb.js"), "export default 1;").unwrap();
        std::fs::write(d.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("link")).unwrap();
        let (body, ct) = static_file(&root, "core/rfb.js").await.unwrap();
        assert_eq!(
            (body.as_slice(), ct),
            (&b"export default 1;"[..], "text/javascript")
        );
        for bad in [
            "../secret",
            "core/../../secret",
            "link",
            "/etc/passwd",
            ".hidden",
            "core",
            "%2e%2e/secret",
        ] {
            assert!(static_file(&root, bad).await.is_none(), "{bad}");
        }
    }
}
