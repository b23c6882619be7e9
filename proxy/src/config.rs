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
//! console = "xenstore"          # or "pty:PATH", "unix:PATH", "none"
//! console_log = "vm1.log"       # default: <console.log_dir>/<name>.log if log_dir is set
//!
//! [[domain.upstream]]           # more views: other VNC servers, switched to by key
//! name = "monitor"
//! connect = "tcp:127.0.0.1:5910"
//! key = "ctrl-alt-f2"
//!
//! [console]                     # every domain's console view
//! cols = 80
//! rows = 25
//! scrollback = 1000
//! keys = "xterm"                # or "linux"
//! fps = 30
//! log_dir = "/var/log/xenvt"
//! log_max_bytes = 1048576
//! log_keep = 3
//!
//! [switch]
//! console = "ctrl-alt-f1"
//! desktop = "ctrl-alt-f7"
//! manual_hold_ms = 5000         # a desktop arriving waits this long after a switch by hand
//!
//! [xenstore]
//! enabled = true                # default: when XENSTORED_PATH or /dev/xen/xenbus exists
//! domains = true                # serve every domain xenstore lists, as they come and go
//! include_dom0 = false
//!
//! [web]                         # WebSocket viewers (noVNC) and a status page
//! listen = "127.0.0.1:6080"     # anything but loopback needs a viewer password
//! path = "/websockify"          # ws://HOST:PORT/websockify/<domid or name>
//! novnc_dir = "/usr/share/xenvt/novnc"  # holds noVNC's core/ and vendor/
//!
//! [control]                     # metrics and status, root only
//! socket = "/run/xenvt-proxy/proxy.ctl"  # default: proxy.ctl beside upstream.backend_socket
//! # listen = "127.0.0.1:9102"  # also on loopback TCP
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use xenvt_ring::config::{ConfigError, ConfigText, Load};

use crate::console::{ConsoleConfig, KeyFlavour};
use crate::console_view::ConsoleSpec;
use crate::error::{Error, Result};
use crate::rfb::encoding;
use crate::view::{Binding, SwitchPolicy, Target};

/// The default viewer port is this plus the domain id.
pub const BASE_PORT: u16 = 5900;
/// The control socket's file name beside the backend socket, unless configured.
pub const CONTROL_NAME: &str = "proxy.ctl";
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
    #[serde(default)]
    console: RawConsole,
    #[serde(default)]
    switch: RawSwitch,
    #[serde(default)]
    xenstore: RawXenstore,
    web: Option<RawWeb>,
    #[serde(default)]
    control: RawControl,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
    listen: Option<SocketAddr>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    cols: Option<u16>,
    rows: Option<u16>,
    scrollback: Option<usize>,
    keys: Option<String>,
    fps: Option<u32>,
    log_dir: Option<PathBuf>,
    log_max_bytes: Option<u64>,
    log_keep: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSwitch {
    console: Option<String>,
    desktop: Option<String>,
    manual_hold_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawXenstore {
    enabled: Option<bool>,
    domains: Option<bool>,
    include_dom0: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    listen: Option<SocketAddr>,
    path: Option<String>,
    novnc_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExtra {
    name: String,
    connect: String,
    key: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
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
    port_base: Option<u16>,
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
    console: Option<String>,
    console_log: Option<PathBuf>,
    #[serde(default)]
    upstream: Vec<RawExtra>,
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
    /// Where its console is.
    pub console: ConsoleSpec,
    /// Its console log file, if kept.
    pub console_log: Option<PathBuf>,
    /// More upstream VNC servers shown as views of their own.
    pub extras: Vec<ExtraUpstream>,
}

/// A configured upstream VNC server other than the desktop: a view reached by its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraUpstream {
    /// Its name: the view's label and its binding's target.
    pub name: String,
    /// Where to dial.
    pub dial: Dial,
    /// VncAuth password, if it asks.
    pub password: Option<Vec<u8>>,
    /// The key that shows it.
    pub binding: Option<Binding>,
}

/// Every domain's console view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleDefaults {
    /// Grid, scrollback, key flavour.
    pub config: ConsoleConfig,
    /// Most renders a second.
    pub fps: u32,
    /// Where per-domain logs go when a domain names no log of its own.
    pub log_dir: Option<PathBuf>,
    /// Largest log file.
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    pub log_keep: u32,
}

/// Whether and how xenstore is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XenstoreConfig {
    /// `None`: use it when `XENSTORED_PATH` is set or `/dev/xen/xenbus` exists.
    pub enabled: Option<bool>,
    /// Serve every domain xenstore lists, as they are created and destroyed.
    pub domains: bool,
    /// Serve domain 0 too.
    pub include_dom0: bool,
}

/// The WebSocket and status page listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The WebSocket path prefix; the domain follows it.
    pub path: String,
    /// noVNC's files (`core/`, `vendor/`), served under `/novnc/`.
    pub novnc_dir: Option<PathBuf>,
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
    /// Unconfigured domains listen on this plus the domain id; 0: any free port.
    pub port_base: u16,
    /// Upstream settings.
    pub upstream: UpstreamConfig,
    /// The TCP reverse listener and the domain it feeds.
    pub reverse: Option<(SocketAddr, u16)>,
    /// Configured domains by id.
    pub domains: BTreeMap<u16, DomainConfig>,
    /// Console view settings.
    pub console: ConsoleDefaults,
    /// Key bindings and automatic switching (per domain, extras' keys are added).
    pub switch: SwitchPolicy,
    /// Xenstore use.
    pub xenstore: XenstoreConfig,
    /// The web listener, if any.
    pub web: Option<WebConfig>,
    /// The control socket (`GET /metrics`, `GET /status`), root-only 0600.
    pub control: Option<PathBuf>,
    /// Also serve the control endpoint on this loopback TCP address.
    pub control_tcp: Option<SocketAddr>,
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
    /// Validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        Config::from_str_for(Some(path), text)
    }
}

/// [`Load::load`] reads the file; relative paths inside are taken from its directory.
impl Load for Config {
    type Error = Error;

    fn check(src: &ConfigText<'_>) -> Result<Config, ConfigError> {
        let bad = |key: &str, msg: String, fix: &str| src.error(key, msg, fix);
        let raw: RawConfig = src.parse()?;
        let base = src.file().and_then(Path::parent).unwrap_or(Path::new("."));
        let rel = |p: &Path| base.join(p);
        // `keys`: the table and its two password keys, to point at the line.
        let read_secret = |what: &str,
                           keys: (&str, &str, &str),
                           inline: Option<String>,
                           file: Option<PathBuf>| {
            let (table, ik, fk) = keys;
            let p = match (inline, file) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        &format!("{table}{fk}"),
                        format!("{what}: both {ik} and {fk} are set"),
                        &format!("remove {ik} or {fk}"),
                    ))
                }
                (Some(p), None) => Some(p.into_bytes()),
                (None, Some(f)) => {
                    let f = rel(&f);
                    let t = std::fs::read_to_string(&f).map_err(|e| {
                        bad(
                            &format!("{table}{fk}"),
                            format!("{what}: cannot read {}: {e}", f.display()),
                            &format!("create the file or correct {fk} (relative paths start at the config's directory)"),
                        )
                    })?;
                    Some(t.lines().next().unwrap_or("").as_bytes().to_vec())
                }
                (None, None) => None,
            };
            if p.as_ref().is_some_and(Vec::is_empty) {
                return Err(bad(
                    &format!("{table}{ik}"),
                    format!("{what}: the password is empty"),
                    &format!("set a non-empty {ik} (or a file whose first line is one)"),
                ));
            }
            Ok(p)
        };

        let v = raw.viewer;
        let pw = read_secret(
            "viewer",
            ("viewer.", "password", "password_file"),
            v.password,
            v.password_file,
        )?;
        let security = match (v.security.as_deref(), pw) {
            (None | Some("vncauth"), Some(p)) => Security::VncAuth(p),
            (Some("vncauth"), None) => {
                return Err(bad(
                    "viewer.security",
                    "viewer: security \"vncauth\" without a password".into(),
                    "set viewer.password_file (or viewer.password)",
                ))
            }
            (None | Some("none"), None) => Security::None,
            (Some("none"), Some(_)) => {
                return Err(bad(
                    "viewer.security",
                    "viewer: security \"none\" with a password".into(),
                    "set viewer.security = \"vncauth\", or remove the password",
                ))
            }
            (Some(other), _) => {
                return Err(bad(
                    "viewer.security",
                    format!("viewer: unknown security {other:?}"),
                    "use one of \"none\", \"vncauth\"",
                ))
            }
        };
        let default_listen = v.listen.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let refuse_open = |addr: IpAddr, key: &str, what: &str| {
            if security == Security::None && !addr.is_loopback() {
                Err(bad(
                    key,
                    format!(
                        "{what}: viewers would listen on {addr}, which is not loopback, without \
                         a password"
                    ),
                    "set viewer.password_file (security \"vncauth\"), or listen on 127.0.0.1",
                ))
            } else {
                Ok(())
            }
        };
        refuse_open(default_listen, "viewer.listen", "viewer.listen")?;

        let u = raw.upstream;
        let encodings = match u.encodings {
            None => vec![encoding::RAW],
            Some(list) => {
                let mut v = Vec::new();
                for (i, name) in list.iter().enumerate() {
                    let e = encoding_number(name).ok_or_else(|| {
                        bad(
                            &format!("upstream.encodings.{i}"),
                            format!("upstream.encodings: unknown encoding {name:?}"),
                            "use some of \"raw\", \"copyrect\", \"rre\", \"hextile\", \"zlib\", \"tight\", \"zrle\"",
                        )
                    })?;
                    if e != encoding::COPY_RECT && !v.contains(&e) {
                        v.push(e);
                    }
                }
                if v.is_empty() {
                    return Err(bad(
                        "upstream.encodings",
                        "upstream.encodings: no pixel encoding given".into(),
                        "add \"raw\" (or another pixel encoding) to upstream.encodings",
                    ));
                }
                v
            }
        };

        let mut domains = BTreeMap::new();
        let mut ports = HashSet::new();
        for (i, d) in raw.domain.into_iter().enumerate() {
            let what = format!("domain {}", d.domid);
            let k = |key: &str| format!("domain.{i}.{key}");
            let port = match (d.port, v.port_base.unwrap_or(BASE_PORT)) {
                (Some(p), _) => p,
                (None, 0) => 0,
                (None, base) => base.checked_add(d.domid).ok_or_else(|| {
                    bad(
                        &k("domid"),
                        format!("{what}: port_base + domid overflows"),
                        "set port in this [[domain]]",
                    )
                })?,
            };
            let listen = d.listen.unwrap_or(default_listen);
            refuse_open(listen, &k("listen"), &what)?;
            if port != 0 && !ports.insert(port) {
                return Err(bad(
                    &k("port"),
                    format!("{what}: port {port} is used twice"),
                    "set a port of its own in this [[domain]]",
                ));
            }
            let desktop_password = read_secret(
                &what,
                (&k(""), "desktop_password", "desktop_password_file"),
                d.desktop_password,
                d.desktop_password_file,
            )?;
            let connect = d
                .connect
                .map(|c| {
                    parse_dial(&c).map_err(|m| {
                        bad(
                            &k("connect"),
                            format!("{what}: connect: {m}"),
                            "use \"tcp:HOST:PORT\" or \"unix:PATH\"",
                        )
                    })
                })
                .transpose()?;
            let name = d.name.unwrap_or_else(|| format!("domain{}", d.domid));
            if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                return Err(bad(
                    &k("name"),
                    format!("{what}: name must be 1 to 255 bytes without control characters"),
                    "set a printable name, or remove name",
                ));
            }
            let console = match d.console.as_deref() {
                None => ConsoleSpec::Xenstore,
                Some(c) => parse_console(c).map_err(|m| {
                    bad(
                        &k("console"),
                        format!("{what}: console: {m}"),
                        "use one of \"xenstore\", \"none\", \"pty:PATH\", \"unix:PATH\"",
                    )
                })?,
            };
            let mut extras = Vec::new();
            for (j, e) in d.upstream.into_iter().enumerate() {
                let w = format!("{what}: upstream {:?}", e.name);
                let ku = |key: &str| k(&format!("upstream.{j}.{key}"));
                if e.name.is_empty()
                    || e.name.len() > 64
                    || !e
                        .name
                        .chars()
                        .all(|c| c.is_alphanumeric() || "-_.".contains(c))
                    || ["console", "desktop"].contains(&e.name.as_str())
                    || extras.iter().any(|x: &ExtraUpstream| x.name == e.name)
                {
                    return Err(bad(
                        &ku("name"),
                        format!("{w}: not a usable view name"),
                        "rename it: 1 to 64 letters, digits, '-', '_' or '.', unique in the \
                         domain, not \"console\" or \"desktop\"",
                    ));
                }
                let dial = parse_dial(&e.connect).map_err(|m| {
                    bad(
                        &ku("connect"),
                        format!("{w}: connect: {m}"),
                        "use \"tcp:HOST:PORT\" or \"unix:PATH\"",
                    )
                })?;
                let password = read_secret(
                    &w,
                    (&ku(""), "password", "password_file"),
                    e.password,
                    e.password_file,
                )?;
                let binding = e
                    .key
                    .map(|key| Binding::parse(&key, Target::Named(e.name.clone())))
                    .transpose()
                    .map_err(|m| {
                        bad(
                            &ku("key"),
                            format!("{w}: key: {m}"),
                            "use a binding such as \"ctrl-alt-f2\"",
                        )
                    })?;
                extras.push(ExtraUpstream {
                    name: e.name,
                    dial,
                    password,
                    binding,
                });
            }
            let dc = DomainConfig {
                domid: d.domid,
                name,
                viewer_addr: SocketAddr::new(listen, port),
                desktop_password,
                connect,
                console,
                console_log: d.console_log.map(|p| rel(&p)),
                extras,
            };
            if domains.insert(d.domid, dc).is_some() {
                return Err(bad(
                    &k("domid"),
                    format!("{what}: configured twice"),
                    "remove one of the two [[domain]] sections or change its domid",
                ));
            }
        }

        let reverse = match raw.reverse {
            None => None,
            Some(r) => {
                if !domains.contains_key(&r.domid) {
                    return Err(bad(
                        "reverse.domid",
                        format!("reverse: domain {} has no [[domain]] section", r.domid),
                        &format!(
                            "add a [[domain]] with domid = {}, or correct reverse.domid",
                            r.domid
                        ),
                    ));
                }
                Some((r.listen.unwrap_or(DEFAULT_REVERSE), r.domid))
            }
        };

        let c = raw.console;
        let keys = match c.keys.as_deref() {
            None | Some("xterm") => KeyFlavour::Xterm,
            Some("linux") => KeyFlavour::Linux,
            Some(o) => {
                return Err(bad(
                    "console.keys",
                    format!("console.keys: unknown flavour {o:?}"),
                    "use one of \"xterm\", \"linux\"",
                ))
            }
        };
        let cc = ConsoleConfig {
            cols: c.cols.unwrap_or(80),
            rows: c.rows.unwrap_or(25),
            scrollback: c.scrollback.unwrap_or(1000),
            keys,
        };
        cc.validate().map_err(|e| {
            bad(
                "console",
                format!("console: {e}"),
                "bring console.cols, console.rows and console.scrollback within range, or remove them",
            )
        })?;
        let console = ConsoleDefaults {
            config: cc,
            fps: c.fps.unwrap_or(30).clamp(1, 120),
            log_dir: c.log_dir.map(|p| rel(&p)),
            log_max_bytes: c.log_max_bytes.unwrap_or(1 << 20).max(1),
            log_keep: c.log_keep.unwrap_or(3).max(1),
        };
        let sw = raw.switch;
        let mut switch = SwitchPolicy::default();
        if let Some(ms) = sw.manual_hold_ms {
            switch.manual_hold = std::time::Duration::from_millis(ms.min(3_600_000));
        }
        for (spec, target, what) in [
            (sw.console, Target::Console, "switch.console"),
            (sw.desktop, Target::Desktop, "switch.desktop"),
        ] {
            if let Some(spec) = spec {
                let b = Binding::parse(&spec, target.clone()).map_err(|m| {
                    bad(
                        what,
                        format!("{what}: {m}"),
                        "use a binding such as \"ctrl-alt-f1\"",
                    )
                })?;
                switch.bindings.retain(|x| x.target != target);
                switch.bindings.push(b);
            }
        }
        let xs = raw.xenstore;
        let xenstore = XenstoreConfig {
            enabled: xs.enabled,
            domains: xs.domains.unwrap_or(false),
            include_dom0: xs.include_dom0.unwrap_or(false),
        };
        let web = match raw.web {
            None => None,
            Some(w) => {
                let listen = w
                    .listen
                    .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6080));
                refuse_open(listen.ip(), "web.listen", "web.listen")?;
                let path = w.path.unwrap_or_else(|| "/websockify".into());
                if !path.starts_with('/') || path.len() > 200 || path.contains(['?', '#', ' ']) {
                    return Err(bad(
                        "web.path",
                        format!("web.path: {path:?} is not an absolute URL path"),
                        "set web.path to a path such as \"/websockify\" (no '?', '#' or spaces)",
                    ));
                }
                Some(WebConfig {
                    listen,
                    path: path.trim_end_matches('/').to_owned(),
                    novnc_dir: w.novnc_dir.map(|p| rel(&p)),
                })
            }
        };

        let backend_socket = u.backend_socket.map(|p| rel(&p));
        let control =
            match raw.control.socket {
                Some(p) if p.file_name().is_none() => return Err(bad(
                    "control.socket",
                    format!("control.socket {} names no file", p.display()),
                    "set control.socket to a socket path such as \"/run/xenvt-proxy/proxy.ctl\"",
                )),
                Some(p) => Some(rel(&p)),
                None => backend_socket
                    .as_ref()
                    .and_then(|b| b.parent())
                    .map(|d| d.join(CONTROL_NAME)),
            };
        if let Some(a) = raw.control.listen {
            xenvt_ring::control::check_tcp(a).map_err(|m| {
                bad(
                    "control.listen",
                    format!("control.listen: {m}"),
                    "use a loopback address such as \"127.0.0.1:9102\" (the endpoint has no password)",
                )
            })?;
        }

        Ok(Config {
            control,
            control_tcp: raw.control.listen,
            console,
            switch,
            xenstore,
            web,
            security,
            max_cut_text: v.max_cut_text.unwrap_or(1 << 20),
            default_listen,
            auto_domains: v.auto_domains.unwrap_or(true),
            port_base: v.port_base.unwrap_or(BASE_PORT),
            upstream: UpstreamConfig {
                backend_socket,
                encodings,
                continuous_updates: u.continuous_updates.unwrap_or(true),
            },
            reverse,
            domains,
        })
    }
}

impl Config {
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
            viewer_addr: SocketAddr::new(
                self.default_listen,
                if self.port_base == 0 {
                    0
                } else {
                    self.port_base.checked_add(domid)?
                },
            ),
            desktop_password: None,
            connect: None,
            console: ConsoleSpec::Xenstore,
            console_log: None,
            extras: Vec::new(),
        })
    }
}

fn parse_console(s: &str) -> std::result::Result<ConsoleSpec, String> {
    if s == "none" {
        Ok(ConsoleSpec::None)
    } else if s == "xenstore" {
        Ok(ConsoleSpec::Xenstore)
    } else if let Some(p) = s.strip_prefix("pty:").filter(|p| !p.is_empty()) {
        Ok(ConsoleSpec::Pty(PathBuf::from(p)))
    } else if let Some(p) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
        Ok(ConsoleSpec::Unix(PathBuf::from(p)))
    } else {
        Err(format!(
            "{s:?}: want \"xenstore\", \"none\", \"pty:PATH\" or \"unix:PATH\""
        ))
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
        assert!(msg.starts_with("/etc/xenvt/proxy.toml:2:1: "), "{msg}");
        assert!(msg.ends_with("or listen on 127.0.0.1"), "{msg}");
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
            ("[viewer]\nsecurity = \"vncauth\"\n", "without a password"),
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
    fn errors_give_the_line_and_the_fix() {
        let text = "[viewer]\nlisten = \"127.0.0.1\"\n\n[[domain]]\ndomid = 1\n\n[[domain]]\ndomid = 2\nconnect = \"udp:x\"\n";
        let e = parse(text).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/xenvt/proxy.toml:9:1: domain 2: connect: \"udp:x\" must start with tcp: or unix:; \
             use \"tcp:HOST:PORT\" or \"unix:PATH\""
        );
        let e = parse("[viewer]\nsecurity = \"tls\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/xenvt/proxy.toml:2:1: "), "{e}");
        assert!(e.ends_with("use one of \"none\", \"vncauth\""), "{e}");
        let e = parse("[upstream]\nencodings = [\"raw\", \"h264\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/xenvt/proxy.toml:2:21: "), "{e}");
        let e = parse("[xenstore]\ndomain = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/xenvt/proxy.toml:2:1: unknown field `domain`"),
            "{e}"
        );
        assert!(e.contains("did you mean `domains`?"), "{e}");
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
        assert!(c.xenstore.domains);
        assert_eq!(c.web.as_ref().unwrap().path, "/websockify");
        assert_eq!(c.console.log_keep, 3);
    }

    #[test]
    fn console_switch_and_extra_views() {
        let c = parse(
            "[[domain]]\ndomid = 1\nconsole = \"pty:/dev/pts/4\"\n\
             [[domain.upstream]]\nname = \"mon\"\nconnect = \"tcp:127.0.0.1:5999\"\nkey = \"ctrl-alt-f2\"\n\
             [[domain]]\ndomid = 2\n\
             [switch]\nconsole = \"ctrl-alt-f11\"\nmanual_hold_ms = 100\n\
             [console]\ncols = 100\nrows = 30\nkeys = \"linux\"\nlog_dir = \"logs\"\n",
        )
        .unwrap();
        assert_eq!(c.domains[&1].console, ConsoleSpec::Pty("/dev/pts/4".into()));
        assert_eq!(c.domains[&2].console, ConsoleSpec::Xenstore);
        let e = &c.domains[&1].extras[0];
        assert_eq!(e.name, "mon");
        assert_eq!(
            e.binding.as_ref().unwrap().target,
            Target::Named("mon".into())
        );
        assert_eq!(c.switch.manual_hold, std::time::Duration::from_millis(100));
        let console_key = c
            .switch
            .bindings
            .iter()
            .find(|b| b.target == Target::Console);
        assert_eq!(console_key.unwrap().keysym, 0xffc8, "F11 replaced F1");
        assert_eq!(
            (c.console.config.cols, c.console.config.keys),
            (100, KeyFlavour::Linux)
        );
        assert_eq!(c.console.log_dir, Some(PathBuf::from("/etc/xenvt/logs")));
        for (t, want) in [
            ("[[domain]]\ndomid = 1\nconsole = \"tty\"\n", "console"),
            ("[[domain]]\ndomid = 1\n[[domain.upstream]]\nname = \"desktop\"\nconnect = \"tcp:127.0.0.1:1\"\n", "toml:4:1: domain 1: upstream \"desktop\": not a usable view name; rename it"),
            ("[switch]\ndesktop = \"f7\"\n", "ctrl or alt"),
            ("[console]\ncols = 0\n", "cols"),
            ("[web]\npath = \"x\"\n", "web.path"),
        ] {
            let e = parse(t).unwrap_err().to_string();
            assert!(e.contains(want), "{t:?}: {e}");
        }
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
