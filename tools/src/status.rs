//! `xenvt status`: asks the backend and the proxy for their `/status` on their
//! control sockets and prints one line per domain. A daemon that does not
//! answer is named as down; the other one is still shown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest `/status` answer read.
const MAX_ANSWER: usize = 16 << 20;

/// Arguments of `xenvt status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The backend's control socket.
    #[arg(long, default_value = "/run/xenvt/backend.ctl")]
    pub backend: PathBuf,
    /// The proxy's control socket.
    #[arg(long, default_value = "/run/xenvt-proxy/proxy.ctl")]
    pub proxy: PathBuf,
    /// Print both daemons' answers as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One guest as the backend reports it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct BackendDomain {
    /// Domain id.
    pub domid: u16,
    /// Name.
    pub name: String,
    /// waiting, attaching, attached or backoff.
    pub agent_state: String,
    /// dom0 -> guest ring order.
    pub ring_order_to_guest: u8,
    /// guest -> dom0 ring order.
    pub ring_order_from_guest: u8,
    /// Streams open now.
    pub streams_open: u64,
    /// Streams opened so far.
    pub streams_opened: u64,
    /// Bytes into the guest.
    pub bytes_to_guest: u64,
    /// Bytes out of the guest.
    pub bytes_from_guest: u64,
    /// Credit stalls.
    pub credit_stalls: u64,
    /// Rejected frames.
    pub frames_rejected: u64,
    /// Reattachments.
    pub reconnects: u64,
}

/// One domain as the proxy reports it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct ProxyDomain {
    /// Domain id.
    pub domid: u16,
    /// Name.
    pub name: String,
    /// Viewers attached.
    pub viewers: u64,
    /// The current view.
    pub view: String,
    /// "connected" or "none".
    pub desktop: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Answer<T> {
    domains: Vec<T>,
}

/// What one daemon said: its domains, or why it could not be asked.
pub type Reply<T> = Result<Vec<T>, String>;

async fn ask<T: serde::de::DeserializeOwned + Default>(sock: &Path) -> Reply<T> {
    let body = xenvt_ring::control::get_unix(sock, "/status", MAX_ANSWER)
        .await
        .map_err(|e| format!("not answering on {}: {e}", sock.display()))?;
    let a: Answer<T> = serde_json::from_str(&body)
        .map_err(|e| format!("bad answer on {}: {e}", sock.display()))?;
    Ok(a.domains)
}

/// The proxy's domains, from its control socket.
pub async fn proxy_domains(sock: &Path) -> Reply<ProxyDomain> {
    ask(sock).await
}

/// Bytes for people: B, KiB, MiB, GiB.
fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Keeps names from a guest printable and short in a table.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(24)
        .collect()
}

/// The table `xenvt status` prints.
pub fn render(backend: &Reply<BackendDomain>, proxy: &Reply<ProxyDomain>) -> String {
    let mut out = String::new();
    if let Err(e) = backend {
        let _ = writeln!(out, "backend: down ({e})");
    }
    if let Err(e) = proxy {
        let _ = writeln!(out, "proxy: down ({e})");
    }
    let mut rows: BTreeMap<u16, (Option<&BackendDomain>, Option<&ProxyDomain>)> = BTreeMap::new();
    for b in backend.iter().flatten() {
        rows.entry(b.domid).or_default().0 = Some(b);
    }
    for p in proxy.iter().flatten() {
        rows.entry(p.domid).or_default().1 = Some(p);
    }
    let head = [
        "DOMID",
        "NAME",
        "AGENT",
        "ORDERS",
        "STREAMS",
        "TO-GUEST",
        "FROM-GUEST",
        "STALLS",
        "VIEWERS",
        "VIEW",
        "DESKTOP",
    ];
    let mut table: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    let dash = || "-".to_string();
    for (id, (b, p)) in &rows {
        let name = b
            .map(|b| b.name.as_str())
            .or(p.map(|p| p.name.as_str()))
            .unwrap_or("");
        let mut r = vec![id.to_string(), clean(name)];
        match b {
            Some(b) => r.extend([
                b.agent_state.clone(),
                if b.ring_order_to_guest == 0 {
                    dash()
                } else {
                    format!("{}/{}", b.ring_order_to_guest, b.ring_order_from_guest)
                },
                format!("{} ({} total)", b.streams_open, b.streams_opened),
                human(b.bytes_to_guest),
                human(b.bytes_from_guest),
                b.credit_stalls.to_string(),
            ]),
            None => r.extend(std::iter::repeat_with(dash).take(6)),
        }
        match p {
            Some(p) => r.extend([p.viewers.to_string(), clean(&p.view), p.desktop.clone()]),
            None => r.extend(std::iter::repeat_with(dash).take(3)),
        }
        table.push(r);
    }
    if rows.is_empty() {
        let _ = writeln!(out, "no domains served");
        return out;
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in &table {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

/// The `--json` output: each daemon's domains, or its error.
pub fn render_json(backend: &Reply<BackendDomain>, proxy: &Reply<ProxyDomain>) -> String {
    fn one<T: Serialize>(r: &Reply<T>) -> serde_json::Value {
        match r {
            Ok(d) => serde_json::json!({ "up": true, "domains": d }),
            Err(e) => serde_json::json!({ "up": false, "error": e }),
        }
    }
    serde_json::json!({ "backend": one(backend), "proxy": one(proxy) }).to_string()
}

/// Runs `xenvt status`. Fails only when neither daemon answers.
pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let (b, p) = tokio::join!(
        ask::<BackendDomain>(&a.backend),
        ask::<ProxyDomain>(&a.proxy)
    );
    if a.json {
        println!("{}", render_json(&b, &p));
    } else {
        print!("{}", render(&b, &p));
    }
    if b.is_err() && p.is_err() {
        anyhow::bail!("neither the backend nor the proxy answers");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_merges_both_daemons_and_names_a_down_one() {
        let b: Reply<BackendDomain> = Ok(vec![BackendDomain {
            domid: 1,
            name: "vm1".into(),
            agent_state: "attached".into(),
            ring_order_to_guest: 15,
            ring_order_from_guest: 17,
            streams_open: 2,
            streams_opened: 5,
            bytes_to_guest: 1536,
            bytes_from_guest: 3 << 20,
            ..Default::default()
        }]);
        let p: Reply<ProxyDomain> = Ok(vec![
            ProxyDomain {
                domid: 1,
                name: "vm1".into(),
                viewers: 1,
                view: "console".into(),
                desktop: "connected".into(),
            },
            ProxyDomain {
                domid: 2,
                name: "vm\u{1b}2".into(),
                view: "console".into(),
                desktop: "none".into(),
                ..Default::default()
            },
        ]);
        let t = render(&b, &p);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("DOMID  NAME"), "{t}");
        assert!(
            lines[1].contains("attached") && lines[1].contains("15/17"),
            "{t}"
        );
        assert!(
            lines[1].contains("1.5 KiB") && lines[1].contains("3.0 MiB"),
            "{t}"
        );
        assert!(lines[1].ends_with("console  connected"), "{t}");
        assert!(lines[2].starts_with("2      vm?2"), "{t}");
        let t = render(&Err("not answering on /x: refused".into()), &p);
        assert!(
            t.starts_with("backend: down (not answering on /x: refused)\n"),
            "{t}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render_json(&Err("e".into()), &p)).unwrap();
        assert_eq!(j["backend"]["up"], false);
        assert_eq!(j["proxy"]["domains"][0]["view"], "console");
    }
}
