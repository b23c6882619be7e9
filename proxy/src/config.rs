//! The TOML configuration, validated once at startup.
//!
//! ```toml
//! [viewer]
//! listen = "127.0.0.1"          # address of every per-domain viewer port
//! security = "vncauth"          # or "none" (refused off loopback)
//! password_file = "viewer.pass" # or password = "..."
//! max_cut_text = 1048576
//!
//! [upstream]
//! backend_socket = "vnc.sock"   # the backend delivers reverse desktops here
//! encodings = ["raw"]           # what we ask desktops for, most preferred first
//!
//! [reverse]                     # a TCP listener for a desktop not behind xenvt
//! listen = "127.0.0.1:5500"
//! domid = 1
//!
//! [[domain]]
//! domid = 1
//! name = "vm1"
//! port = 5901                   # default 5900 + domid
//! desktop_password = "..."      # VncAuth towards the desktop, if it asks
//! connect = "tcp:127.0.0.1:5901" # or "unix:PATH": dial the desktop ourselves
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::rfb::encoding;

/// The default viewer port is this plus the domain id.
pub const BASE_PORT: u16 = 5900;
/// Where the TCP reverse listener listens unless told otherwise.
pub const DEFAULT_REVERSE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5500);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    viewer: RawViewer,
    #[serde(default)]
    upstream: RawUpstream,
    reverse: Option<RawReverse>,
    #[serde(default)]
    domain: Vec<RawDomain>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawViewer {
    listen: Option<IpAddr>,
    security: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    max_cut_text: Option<u32>,
    auto_domains: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    backend_socket: Option<PathBuf>,
    encodings: Option<Vec<String>>,
    continuous_updates: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReverse {
    listen: Option<SocketAddr>,
    domid: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domid: u16,
    name: Option<String>,
    port: Option<u16>,
    listen: Option<IpAddr>,
    desktop_password: Option<String>,
    desktop_password_file: Option<PathBuf>,
    connect: Option<String>,
}

/// How viewers authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Security {
    /// No authentication: only allowed on loopback.
    None,
    /// VncAuth with this password (VncAuth uses its first 8 bytes).
    VncAuth(Vec<u8>),
}

/// Where a forward desktop connection dials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dial {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

/// One configured domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// The domain id.
    pub domid: u16,
    /// Shown in desktop names; the backend's name wins when it delivers one.
    pub name: String,
    /// The viewer listener (port 0: any free port, reported on stdout).
    pub viewer_addr: SocketAddr,
    /// The desktop's VncAuth password, if it asks for one.
    pub desktop_password: Option<Vec<u8>>,
    /// Dial this desktop ourselves instead of waiting for it.
    pub connect: Option<Dial>,
}

/// What we ask upstream desktops for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The unix socket the backend delivers reverse connections to.
    pub backend_socket: Option<PathBuf>,
    /// Pixel encodings to request, most preferred first.
    pub encodings: Vec<i32>,
    /// Enable continuous updates when the desktop offers them.
    pub continuous_updates: bool,
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How viewers authenticate.
    pub security: Security,
    /// Largest ClientCutText a viewer may send.
    pub max_cut_text: u32,
    /// Viewer address for domains that were not configured.
    pub default_listen: IpAddr,
    /// Serve domains the backend delivers that were not configured (port 5900+domid).
    pub auto_domains: bool,
    /// Upstream settings.
    pub upstream: UpstreamConfig,
    /// The TCP reverse listener and the domain it feeds.
    pub reverse: Option<(SocketAddr, u16)>,
    /// Configured domains by id.
    pub domains: BTreeMap<u16, DomainConfig>,
}

fn encoding_number(name: &str) -> Option<i32> {
    Some(match name.to_ascii_lowercase().as_str() {
        "raw" => encoding::RAW,
        "copyrect" => encoding::COPY_RECT,
        "rre" => encoding::RRE,
        "hextile" => encoding::HEXTILE,
        "zlib" => encoding::ZLIB,
        "tight" => encoding::TIGHT,
        "zrle" => encoding::ZRLE,
        _ => return None,
    })
}

impl Config {
    /// Reads and validates `path`; relative paths inside are taken from its directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            msg: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let bad = |msg: String| Error::Config {
            path: path.to_owned(),
            msg,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: &Path| base.join(p);
        let read_secret =
            |what: &str, inline: Option<String>, file: Option<PathBuf>| match (inline, file) {
                (Some(_), Some(_)) => Err(bad(format!(
                    "{what}: give either a password or a password file, not both"
                ))),
                (Some(p), None) => Ok(Some(p.into_bytes())),
                (None, Some(f)) => {
                    let f = rel(&f);
                    let t = std::fs::read_to_string(&f)
                        .map_err(|e| bad(format!("{what}: cannot read {}: {e}", f.display())))?;
                    Ok(Some(t.lines().next().unwrap_or("").as_bytes().to_vec()))
                }
                (None, None) => Ok(None),
            };
        let check_pw = |what: &str, p: &Option<Vec<u8>>| match p {
            Some(p) if p.is_empty() => Err(bad(format!("{what}: the password is empty"))),
            _ => Ok(()),
        };

        let v = raw.viewer;
        let pw = read_secret("viewer", v.password, v.password_file)?;
        check_pw("viewer", &pw)?;
        let security = match (v.security.as_deref(), pw) {
            (None | Some("vncauth"), Some(p)) => Security::VncAuth(p),
            (Some("vncauth"), None) => {
                return Err(bad(
                    "viewer: security \"vncauth\" needs password or password_file".into(),
                ))
            }
            (None | Some("none"), None) => Security::None,
            (Some("none"), Some(_)) => {
                return Err(bad(
                    "viewer: security \"none\" with a password; say \"vncauth\"".into(),
                ))
            }
            (Some(other), _) => {
                return Err(bad(format!(
                    "viewer: unknown security {other:?} (want \"none\" or \"vncauth\")"
                )))
            }
        };
        let default_listen = v.listen.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let refuse_open = |addr: IpAddr, what: &str| {
            if security == Security::None && !addr.is_loopback() {
                Err(bad(format!(
                    "{what}: viewers would listen on {addr}, which is not loopback, without \
                     a password; set viewer.security = \"vncauth\" with a password"
                )))
            } else {
                Ok(())
            }
        };
        refuse_open(default_listen, "viewer.listen")?;

        let u = raw.upstream;
        let encodings = match u.encodings {
            None => vec![encoding::RAW],
            Some(list) => {
                let mut v = Vec::new();
                for name in &list {
                    let e = encoding_number(name).ok_or_else(|| {
                        bad(format!("upstream.encodings: unknown encoding {name:?}"))
                    })?;
                    if e != encoding::COPY_RECT && !v.contains(&e) {
                        v.push(e);
                    }
                }
                if v.is_empty() {
                    return Err(bad("upstream.encodings: no pixel encoding given".into()));
                }
                v
            }
        };

        let mut domains = BTreeMap::new();
        let mut ports = HashSet::new();
        for d in raw.domain {
            let what = format!("domain {}", d.domid);
            let port = match d.port {
                Some(p) => p,
                None => BASE_PORT
                    .checked_add(d.domid)
                    .ok_or_else(|| bad(format!("{what}: 5900 + domid overflows; set a port")))?,
            };
            let listen = d.listen.unwrap_or(default_listen);
            refuse_open(listen, &what)?;
            if port != 0 && !ports.insert(port) {
                return Err(bad(format!("{what}: port {port} is used twice")));
            }
            let desktop_password = read_secret(&what, d.desktop_password, d.desktop_password_file)?;
            check_pw(&what, &desktop_password)?;
            let connect = d
                .connect
                .map(|c| parse_dial(&c).map_err(|m| bad(format!("{what}: connect: {m}"))))
                .transpose()?;
            let name = d.name.unwrap_or_else(|| format!("domain{}", d.domid));
            if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                return Err(bad(format!(
                    "{what}: name must be 1 to 255 bytes without control characters"
                )));
            }
            let dc = DomainConfig {
                domid: d.domid,
                name,
                viewer_addr: SocketAddr::new(listen, port),
                desktop_password,
                connect,
            };
            if domains.insert(d.domid, dc).is_some() {
                return Err(bad(format!("{what}: configured twice")));
            }
        }

        let reverse = match raw.reverse {
            None => None,
            Some(r) => {
                if !domains.contains_key(&r.domid) {
                    return Err(bad(format!(
                        "reverse: domain {} has no [[domain]] section",
                        r.domid
                    )));
                }
                Some((r.listen.unwrap_or(DEFAULT_REVERSE), r.domid))
            }
        };

        Ok(Config {
            security,
            max_cut_text: v.max_cut_text.unwrap_or(1 << 20),
            default_listen,
            auto_domains: v.auto_domains.unwrap_or(true),
            upstream: UpstreamConfig {
                backend_socket: u.backend_socket.map(|p| rel(&p)),
                encodings,
                continuous_updates: u.continuous_updates.unwrap_or(true),
            },
            reverse,
            domains,
        })
    }

    /// The settings of `domid`, made up from the defaults if it was not configured.
    pub fn domain(&self, domid: u16, name: Option<&str>) -> Option<DomainConfig> {
        if let Some(d) = self.domains.get(&domid) {
            return Some(d.clone());
        }
        if !self.auto_domains {
            return None;
        }
        Some(DomainConfig {
            domid,
            name: name.map_or_else(|| format!("domain{domid}"), str::to_owned),
            viewer_addr: SocketAddr::new(self.default_listen, BASE_PORT.checked_add(domid)?),
            desktop_password: None,
            connect: None,
        })
    }
}

fn parse_dial(s: &str) -> std::result::Result<Dial, String> {
    if let Some(a) = s.strip_prefix("tcp:") {
        a.parse()
            .map(Dial::Tcp)
            .map_err(|e| format!("bad address {a:?}: {e}"))
    } else if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("empty unix path".into());
        }
        Ok(Dial::Unix(PathBuf::from(p)))
    } else {
        Err(format!("{s:?} must start with tcp: or unix:"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config> {
        Config::parse(t, Path::new("/etc/xenvt/proxy.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("[[domain]]\ndomid = 3\n").unwrap();
        assert_eq!(c.security, Security::None);
        let d = &c.domains[&3];
        assert_eq!(d.viewer_addr, "127.0.0.1:5903".parse().unwrap());
        assert_eq!(d.name, "domain3");
        assert_eq!(c.upstream.encodings, vec![encoding::RAW]);
        assert_eq!(c.reverse, None);
        assert_eq!(
            c.domain(7, Some("vm7")).unwrap().viewer_addr.port(),
            5907,
            "unconfigured domains get 5900+domid"
        );
    }

    #[test]
    fn open_listener_needs_a_password() {
        let e = parse("[viewer]\nlisten = \"0.0.0.0\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/etc/xenvt/proxy.toml: "), "{msg}");
        assert!(msg.contains("not loopback"), "{msg}");
        let e = parse("[[domain]]\ndomid = 1\nlisten = \"::\"\n").unwrap_err();
        assert!(e.to_string().contains("domain 1"), "{e}");
        let c = parse("[viewer]\nlisten = \"0.0.0.0\"\npassword = \"pw\"\n").unwrap();
        assert_eq!(c.security, Security::VncAuth(b"pw".to_vec()));
    }

    #[test]
    fn password_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\nignored\n").unwrap();
        let cfg = dir.path().join("p.toml");
        let c = Config::parse(
            "[viewer]\nsecurity = \"vncauth\"\npassword_file = \"pw\"\n",
            &cfg,
        )
        .unwrap();
        assert_eq!(c.security, Security::VncAuth(b"s3cret".to_vec()));
        let e = Config::parse("[viewer]\npassword_file = \"nope\"\n", &cfg).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn bad_inputs_are_named() {
        for (t, want) in [
            ("[viewer]\nsecurity = \"vncauth\"\n", "needs password"),
            ("[viewer]\nsecurity = \"tls\"\n", "unknown security"),
            ("[viewer]\nbogus = 1\n", "unknown field"),
            ("[upstream]\nencodings = [\"h264\"]\n", "unknown encoding"),
            (
                "[upstream]\nencodings = [\"copyrect\"]\n",
                "no pixel encoding",
            ),
            (
                "[[domain]]\ndomid = 1\n[[domain]]\ndomid = 1\nport = 6000\n",
                "twice",
            ),
            (
                "[[domain]]\ndomid = 1\nport = 6000\n[[domain]]\ndomid = 2\nport = 6000\n",
                "used twice",
            ),
            (
                "[[domain]]\ndomid = 1\nconnect = \"udp:x\"\n",
                "tcp: or unix:",
            ),
            ("[reverse]\ndomid = 4\n", "no [[domain]]"),
            ("[[domain]]\ndomid = 1\nname = \"\"\n", "name must be"),
            ("[viewer]\npassword = \"\"\n", "empty"),
            ("not toml [", ""),
        ] {
            let e = parse(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t:?}: {e}");
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["viewer.pass", "vm2-desktop.pass"] {
            std::fs::write(dir.path().join(f), "pw\n").unwrap();
        }
        let text = include_str!("../dist/proxy.toml");
        let c = Config::parse(text, &dir.path().join("proxy.toml")).unwrap();
        assert_eq!(c.security, Security::VncAuth(b"pw".to_vec()));
        assert_eq!(c.domains.len(), 2);
    }

    #[test]
    fn reverse_and_connect() {
        let c = parse(
            "[reverse]\ndomid = 1\n[[domain]]\ndomid = 1\nconnect = \"unix:/run/d.sock\"\n\
             [[domain]]\ndomid = 2\nconnect = \"tcp:127.0.0.1:5999\"\n\
             [upstream]\nencodings = [\"zrle\", \"copyrect\", \"raw\"]\n",
        )
        .unwrap();
        assert_eq!(c.reverse, Some((DEFAULT_REVERSE, 1)));
        assert_eq!(
            c.domains[&1].connect,
            Some(Dial::Unix("/run/d.sock".into()))
        );
        assert_eq!(
            c.domains[&2].connect,
            Some(Dial::Tcp("127.0.0.1:5999".parse().unwrap()))
        );
        assert_eq!(c.upstream.encodings, vec![encoding::ZRLE, encoding::RAW]);
    }
}
