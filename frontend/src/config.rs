//! The agent's TOML configuration, checked as a whole before anything starts.
//!
//! ```toml
//! [channel]
//! path = "data/xenvt"     # under this domain's xenstore home
//! backend = 0             # the backend's domain id
//! ring_order = 17         # 2^order bytes per direction
//!
//! [[listen]]              # guest -> dom0: a local listener per service
//! address = "127.0.0.1:5500"
//! service = "vnc"
//! # public = true         # required for a non-loopback address
//!
//! [services.vnc]          # dom0 -> guest: where a REQUEST for "vnc" goes
//! connect = "127.0.0.1:5900"
//!
//! [hook]                  # run when a backend (re)connects
//! command = ["vncconfig", "-display", ":0", "-connect", "127.0.0.1:5500"]
//! timeout_secs = 30
//! # service = "vnc"       # the stream it brings back (default: "vnc" if listened)
//! # redial = true         # run again when dom0 drops that stream
//! # redial_min_secs = 1   # first pause, doubled per failure...
//! # redial_max_secs = 60  # ...up to this
//! # redial_reset_secs = 10 # a stream that lasted this long resets the pause
//!
//! [limits]
//! max_streams = 256
//! stream_buf = 262144
//! ```
//!
//! Without a file, the agent listens on 127.0.0.1:5500 as service `vnc` and
//! refuses every dom0 -> guest request.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use xenvt_ring::config::ConfigText;

use crate::{Error, Result};

/// The default listener: the port TigerVNC's reverse connection goes to.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5500";
/// The default listener's service.
pub const DEFAULT_SERVICE: &str = "vnc";

/// The checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: Option<PathBuf>,
    /// xenstore path of the channel, relative to the domain's home.
    pub path: String,
    /// The backend's domain id.
    pub backend: u16,
    /// Ring order of both directions.
    pub ring_order: u8,
    /// Local listeners (guest -> dom0).
    pub listen: Vec<Listen>,
    /// Allowed dom0 -> guest targets, by service name.
    pub services: BTreeMap<String, SocketAddr>,
    /// The command run when a backend connects.
    pub hook: Option<Hook>,
    /// Streams per channel.
    pub max_streams: u32,
    /// Receive buffer (credit) per stream.
    pub stream_buf: u32,
}

/// One local listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Where to listen.
    pub address: SocketAddr,
    /// The service each accepted connection asks for in dom0.
    pub service: String,
}

/// The backend-connected hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    /// How long it may run before it is killed.
    pub timeout: Duration,
    /// Running it again when dom0 drops the stream it made; `None`: only when a
    /// backend connects.
    pub redial: Option<Redial>,
}

/// When the hook runs again for its service (docs/operations.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redial {
    /// The guest -> dom0 service whose stream the hook makes.
    pub service: String,
    /// The first pause after a loss.
    pub min: Duration,
    /// The longest pause: each failure doubles it up to here.
    pub max: Duration,
    /// A stream that lasted this long counts as a success and resets the pause.
    pub reset: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    channel: RawChannel,
    listen: Option<Vec<RawListen>>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    hook: Option<RawHook>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    path: Option<String>,
    backend: Option<u16>,
    ring_order: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: String,
    service: String,
    #[serde(default)]
    public: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    connect: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    command: Vec<String>,
    timeout_secs: Option<u64>,
    service: Option<String>,
    redial: Option<bool>,
    redial_min_secs: Option<u64>,
    redial_max_secs: Option<u64>,
    redial_reset_secs: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_streams: Option<u32>,
    stream_buf: Option<u32>,
}

/// Whether `s` is a usable service name: 1 to 64 of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot (the backend turns names into socket file names).
pub fn valid_service(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_rel_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 256
        && !p.starts_with('/')
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// The `[hook]` redial keys, checked against the listeners (the hook's service
/// must be one we listen for, or no stream of it can ever be seen).
fn redial_of(
    h: &RawHook,
    listen: &[Listen],
    bad: &dyn Fn(&str, String, &str) -> Error,
) -> Result<Option<Redial>> {
    let listened = |s: &str| listen.iter().any(|l| l.service == s);
    let service = match &h.service {
        Some(s) if !listened(s) => {
            return Err(bad(
                "hook.service",
                format!("hook.service {s:?} has no [[listen]] entry"),
                "set hook.service to the service of a [[listen]] entry (usually \"vnc\")",
            ))
        }
        Some(s) => Some(s.clone()),
        None => listened(DEFAULT_SERVICE).then(|| DEFAULT_SERVICE.to_owned()),
    };
    let service = match (h.redial, service) {
        (Some(false), _) => return Ok(None),
        (None, None) => return Ok(None),
        (Some(true), None) => {
            return Err(bad(
                "hook.redial",
                format!(
                    "hook.redial needs a service, and no [[listen]] serves {DEFAULT_SERVICE:?}"
                ),
                "set hook.service to the service of a [[listen]] entry, or set redial = false",
            ))
        }
        (_, Some(s)) => s,
    };
    let secs = |key: &str, v: Option<u64>, default: u64| -> Result<Duration> {
        let v = v.unwrap_or(default);
        if !(1..=3600).contains(&v) {
            return Err(bad(
                &format!("hook.{key}"),
                format!("hook.{key} {v} is outside 1..=3600"),
                &format!("set hook.{key} between 1 and 3600 ({default} is the default)"),
            ));
        }
        Ok(Duration::from_secs(v))
    };
    let min = secs("redial_min_secs", h.redial_min_secs, 1)?;
    let max = secs("redial_max_secs", h.redial_max_secs, 60)?;
    let reset = secs("redial_reset_secs", h.redial_reset_secs, 10)?;
    if max < min {
        return Err(bad(
            "hook.redial_max_secs",
            format!(
                "hook.redial_max_secs {} is below redial_min_secs {}",
                max.as_secs(),
                min.as_secs()
            ),
            "set redial_max_secs to at least redial_min_secs",
        ));
    }
    Ok(Some(Redial {
        service,
        min,
        max,
        reset,
    }))
}

impl Default for Config {
    fn default() -> Self {
        Config::from_str_for(None, "").unwrap_or_else(|e| unreachable!("defaults are valid: {e}"))
    }
}

impl Config {
    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Config> {
        let text = xenvt_ring::config::read(file)?;
        Config::from_str_for(Some(file), &text)
    }

    /// Parses and checks `text`; `file` names it in errors.
    pub fn from_str_for(file: Option<&Path>, text: &str) -> Result<Config> {
        let src = ConfigText::new(file, text);
        let bad =
            |key: &str, problem: String, fix: &str| Error::Config(src.error(key, problem, fix));
        // For keys under a name (which may hold dots).
        let bad_at = |path: &[&str], problem: String, fix: &str| {
            Error::Config(src.error_at(path, problem, fix))
        };
        let raw: Raw = src.parse()?;
        let path = raw.channel.path.unwrap_or_else(|| "data/xenvt".into());
        if !valid_rel_path(&path) {
            return Err(bad(
                "channel.path",
                format!(
                    "channel.path {path:?} is not a relative xenstore path of plain components"
                ),
                "set channel.path to a relative path such as \"data/xenvt\"",
            ));
        }
        let ring_order = raw.channel.ring_order.unwrap_or(17);
        if !(10..=20).contains(&ring_order) {
            return Err(bad(
                "channel.ring_order",
                format!("channel.ring_order {ring_order} is outside 10..=20"),
                "set channel.ring_order between 10 and 20 (17 is the default), or remove it",
            ));
        }
        let explicit = raw.listen.is_some();
        let raw_listen = raw.listen.unwrap_or_else(|| {
            vec![RawListen {
                address: DEFAULT_LISTEN.into(),
                service: DEFAULT_SERVICE.into(),
                public: false,
            }]
        });
        let mut listen = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, l) in raw_listen.into_iter().enumerate() {
            let at = |k: &str| {
                if explicit {
                    format!("listen.{i}.{k}")
                } else {
                    String::new()
                }
            };
            let address: SocketAddr = l.address.parse().map_err(|_| {
                bad(
                    &at("address"),
                    format!("listen address {:?} is not IP:PORT", l.address),
                    "set address to an IP:PORT such as \"127.0.0.1:5500\"",
                )
            })?;
            if !valid_service(&l.service) {
                return Err(bad(
                    &at("service"),
                    format!(
                        "listen service {:?} is not 1 to 64 of A-Z a-z 0-9 . _ -",
                        l.service
                    ),
                    "rename the service with those characters only",
                ));
            }
            if !address.ip().is_loopback() && !l.public {
                return Err(bad(
                    &at("address"),
                    format!("listen address {address} is not loopback"),
                    "set public = true in this [[listen]] to expose it, or use 127.0.0.1",
                ));
            }
            // Port 0 picks a free port each time, so only fixed ports can clash.
            if address.port() != 0 && !seen.insert(address) {
                return Err(bad(
                    &at("address"),
                    format!("listen address {address} is given twice"),
                    "remove one of the two [[listen]] entries or change its port",
                ));
            }
            listen.push(Listen {
                address,
                service: l.service,
            });
        }
        let mut services = BTreeMap::new();
        for (name, s) in raw.services {
            if !valid_service(&name) {
                return Err(bad_at(
                    &["services", &name],
                    format!("service name {name:?} is not 1 to 64 of A-Z a-z 0-9 . _ -"),
                    "rename the service with those characters only",
                ));
            }
            let addr: SocketAddr = s.connect.parse().map_err(|_| {
                bad_at(
                    &["services", &name, "connect"],
                    format!("services.{name}.connect {:?} is not IP:PORT", s.connect),
                    "set connect to an IP:PORT such as \"127.0.0.1:5900\"",
                )
            })?;
            services.insert(name, addr);
        }
        let hook = match raw.hook {
            None => None,
            Some(h) => {
                if h.command.is_empty() || h.command[0].is_empty() {
                    return Err(bad(
                        "hook.command",
                        "hook.command names no program".into(),
                        "set hook.command to [\"program\", \"arg\", ...], or remove [hook]",
                    ));
                }
                let secs = h.timeout_secs.unwrap_or(30);
                if !(1..=3600).contains(&secs) {
                    return Err(bad(
                        "hook.timeout_secs",
                        format!("hook.timeout_secs {secs} is outside 1..=3600"),
                        "set hook.timeout_secs between 1 and 3600",
                    ));
                }
                let redial = redial_of(&h, &listen, &bad)?;
                Some(Hook {
                    command: h.command,
                    timeout: Duration::from_secs(secs),
                    redial,
                })
            }
        };
        let max_streams = raw.limits.max_streams.unwrap_or(256);
        if !(1..=65536).contains(&max_streams) {
            return Err(bad(
                "limits.max_streams",
                format!("limits.max_streams {max_streams} is outside 1..=65536"),
                "set limits.max_streams between 1 and 65536 (256 is the default)",
            ));
        }
        let stream_buf = raw.limits.stream_buf.unwrap_or(256 << 10);
        if !(4096..=(16 << 20)).contains(&stream_buf) {
            return Err(bad(
                "limits.stream_buf",
                format!("limits.stream_buf {stream_buf} is outside 4096..=16777216"),
                "set limits.stream_buf between 4096 and 16777216 (262144 is the default)",
            ));
        }
        Ok(Config {
            source: file.map(Path::to_owned),
            path,
            backend: raw.channel.backend.unwrap_or(0),
            ring_order,
            listen,
            services,
            hook,
            max_streams,
            stream_buf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_loopback_vnc_and_allow_nothing() {
        let c = Config::default();
        assert_eq!(c.listen.len(), 1);
        assert_eq!(c.listen[0].address, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.listen[0].service, "vnc");
        assert!(c.services.is_empty());
        assert!(c.hook.is_none());
        assert_eq!(c.path, "data/xenvt");
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_str_for(
            None,
            r#"
            [channel]
            backend = 3
            ring_order = 12
            [[listen]]
            address = "0.0.0.0:6000"
            service = "x"
            public = true
            [services.ssh]
            connect = "127.0.0.1:22"
            [hook]
            command = ["true"]
            timeout_secs = 5
            [limits]
            max_streams = 8
            "#,
        )
        .unwrap();
        assert_eq!(c.backend, 3);
        assert_eq!(c.ring_order, 12);
        assert_eq!(c.services["ssh"], "127.0.0.1:22".parse().unwrap());
        assert_eq!(c.hook.unwrap().timeout, Duration::from_secs(5));
        assert_eq!(c.max_streams, 8);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let f = Path::new("agent.toml");
        let cases = [
            ("[[listen]]\naddress = \"0.0.0.0:1\"\nservice = \"v\"", "not loopback"),
            ("[[listen]]\naddress = \"nope\"\nservice = \"v\"", "not IP:PORT"),
            ("[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"a/b\"", "service"),
            (
                "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"a\"\n[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"b\"",
                "twice",
            ),
            ("[services.\"../x\"]\nconnect = \"127.0.0.1:1\"", "service name"),
            ("[channel]\nring_order = 30", "ring_order"),
            ("[channel]\npath = \"/abs\"", "channel.path"),
            ("[hook]\ncommand = []", "hook.command"),
            ("[limits]\nmax_streams = 0", "max_streams"),
            ("bogus = 1", "unknown field"),
        ];
        for (text, want) in cases {
            let e = Config::from_str_for(Some(f), text).unwrap_err().to_string();
            assert!(e.starts_with("agent.toml:"), "{e}");
            assert!(e.contains(want), "{text:?} -> {e}");
        }
    }

    #[test]
    fn errors_give_the_line_and_the_fix() {
        let f = Path::new("agent.toml");
        let text = "[channel]\nbackend = 0\n\n[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"a\"\n\n[[listen]]\nservice = \"b\"\naddress = \"10.0.0.1:2\"\n";
        let e = Config::from_str_for(Some(f), text).unwrap_err().to_string();
        assert_eq!(
            e,
            "agent.toml:10:1: listen address 10.0.0.1:2 is not loopback; \
             set public = true in this [[listen]] to expose it, or use 127.0.0.1"
        );
        let e = Config::from_str_for(Some(f), "[channel]\nring_ordr = 12\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("agent.toml:2:1: unknown field `ring_ordr`"),
            "{e}"
        );
        assert!(
            e.ends_with("did you mean `ring_order`? rename it, or remove `ring_ordr`"),
            "{e}"
        );
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = Config::from_str_for(None, include_str!("../dist/agent.toml")).unwrap();
        assert_eq!(c.listen[0].address, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.services["vnc"], "127.0.0.1:5900".parse().unwrap());
        assert!(c.hook.is_some());
    }

    #[test]
    fn the_hook_redials_its_listened_service_unless_told_not_to() {
        let hook = |text: &str| Config::from_str_for(None, text).unwrap().hook.unwrap();
        // An old config: no new keys, the default listener: redial "vnc" with the defaults.
        let r = hook("[hook]\ncommand = [\"true\"]").redial.unwrap();
        assert_eq!(r.service, "vnc");
        assert_eq!(
            (r.min, r.max, r.reset),
            (
                Duration::from_secs(1),
                Duration::from_secs(60),
                Duration::from_secs(10)
            )
        );
        assert!(hook("[hook]\ncommand = [\"true\"]\nredial = false")
            .redial
            .is_none());
        // No listener for "vnc" and no service named: the hook only runs on connect.
        let other = "[[listen]]\naddress = \"127.0.0.1:1\"\nservice = \"x\"\n";
        assert!(hook(&format!("{other}[hook]\ncommand = [\"true\"]"))
            .redial
            .is_none());
        let r = hook(&format!(
            "{other}[hook]\ncommand = [\"true\"]\nservice = \"x\"\nredial_min_secs = 2\nredial_max_secs = 8\nredial_reset_secs = 30"
        ))
        .redial
        .unwrap();
        assert_eq!(
            (
                r.service.as_str(),
                r.min.as_secs(),
                r.max.as_secs(),
                r.reset.as_secs()
            ),
            ("x", 2, 8, 30)
        );
        let f = Path::new("agent.toml");
        for (text, want) in [
            (
                "[hook]\ncommand = [\"true\"]\nservice = \"nope\"",
                "hook.service \"nope\" has no [[listen]]",
            ),
            (
                &format!("{other}[hook]\ncommand = [\"true\"]\nredial = true"),
                "hook.redial needs a service",
            ),
            (
                "[hook]\ncommand = [\"true\"]\nredial_min_secs = 0",
                "redial_min_secs 0 is outside",
            ),
            (
                "[hook]\ncommand = [\"true\"]\nredial_min_secs = 9\nredial_max_secs = 3",
                "below redial_min_secs",
            ),
        ] {
            let e = Config::from_str_for(Some(f), text).unwrap_err().to_string();
            assert!(e.starts_with("agent.toml:"), "{e}");
            assert!(e.contains(want), "{text:?} -> {e}");
        }
    }

    #[test]
    fn service_names() {
        assert!(valid_service("vnc"));
        assert!(valid_service("a-b_c.d"));
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_service(bad), "{bad:?}");
        }
    }
}
