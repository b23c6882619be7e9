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
use xenvt_ring::config::{
    valid_name, valid_rel_path, Bounds, ConfigError, ConfigText, Load, MAX_STREAMS, STREAM_BUF,
};

use crate::{Error, Result};

/// The default listener: the port TigerVNC's reverse connection goes to.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5500";
/// The default listener's service.
pub const DEFAULT_SERVICE: &str = "vnc";
/// `channel.ring_order`: 2^order bytes per direction, 1 KiB to 1 MiB.
const RING_ORDER: Bounds<u8> = Bounds {
    min: 10,
    max: 20,
    default: 17,
};
/// `hook.timeout_secs`: how long the hook may run before it is killed.
const HOOK_SECS: Bounds<u64> = Bounds {
    min: 1,
    max: 3600,
    default: 30,
};

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

/// The `[hook]` redial keys, checked against the listeners (the hook's service
/// must be one we listen for, or no stream of it can ever be seen).
fn redial_of(
    h: &RawHook,
    listen: &[Listen],
    src: &ConfigText<'_>,
) -> Result<Option<Redial>, ConfigError> {
    let listened = |s: &str| listen.iter().any(|l| l.service == s);
    let service = match &h.service {
        Some(s) if !listened(s) => {
            return Err(src.error(
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
            return Err(src.error(
                "hook.redial",
                format!(
                    "hook.redial needs a service, and no [[listen]] serves {DEFAULT_SERVICE:?}"
                ),
                "set hook.service to the service of a [[listen]] entry, or set redial = false",
            ))
        }
        (_, Some(s)) => s,
    };
    let secs = |key: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
        let b = Bounds {
            min: 1,
            max: 3600,
            default,
        };
        src.bounded(&format!("hook.{key}"), v, b)
            .map(Duration::from_secs)
    };
    let min = secs("redial_min_secs", h.redial_min_secs, 1)?;
    let max = secs("redial_max_secs", h.redial_max_secs, 60)?;
    let reset = secs("redial_reset_secs", h.redial_reset_secs, 10)?;
    if max < min {
        return Err(src.error(
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

impl Load for Config {
    type Error = Error;

    fn check(src: &ConfigText<'_>) -> Result<Config, ConfigError> {
        let raw: Raw = src.parse()?;
        let path = raw.channel.path.unwrap_or_else(|| "data/xenvt".into());
        if !valid_rel_path(&path) {
            return Err(src.error(
                "channel.path",
                format!(
                    "channel.path {path:?} is not a relative xenstore path of plain components"
                ),
                "set channel.path to a relative path such as \"data/xenvt\"",
            ));
        }
        let ring_order = src.bounded("channel.ring_order", raw.channel.ring_order, RING_ORDER)?;
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
                src.error(
                    &at("address"),
                    format!("listen address {:?} is not IP:PORT", l.address),
                    "set address to an IP:PORT such as \"127.0.0.1:5500\"",
                )
            })?;
            if !valid_name(&l.service) {
                return Err(src.error(
                    &at("service"),
                    format!(
                        "listen service {:?} is not 1 to 64 of A-Z a-z 0-9 . _ -",
                        l.service
                    ),
                    "rename the service with those characters only",
                ));
            }
            if !address.ip().is_loopback() && !l.public {
                return Err(src.error(
                    &at("address"),
                    format!("listen address {address} is not loopback"),
                    "set public = true in this [[listen]] to expose it, or use 127.0.0.1",
                ));
            }
            // Port 0 picks a free port each time, so only fixed ports can clash.
            if address.port() != 0 && !seen.insert(address) {
                return Err(src.error(
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
            if !valid_name(&name) {
                return Err(src.error_at(
                    &["services", &name],
                    format!("service name {name:?} is not 1 to 64 of A-Z a-z 0-9 . _ -"),
                    "rename the service with those characters only",
                ));
            }
            let addr: SocketAddr = s.connect.parse().map_err(|_| {
                src.error_at(
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
                    return Err(src.error(
                        "hook.command",
                        "hook.command names no program",
                        "set hook.command to [\"program\", \"arg\", ...], or remove [hook]",
                    ));
                }
                let secs = src.bounded("hook.timeout_secs", h.timeout_secs, HOOK_SECS)?;
                let redial = redial_of(&h, &listen, src)?;
                Some(Hook {
                    command: h.command,
                    timeout: Duration::from_secs(secs),
                    redial,
                })
            }
        };
        let l = raw.limits;
        let max_streams = src.bounded("limits.max_streams", l.max_streams, MAX_STREAMS)?;
        let stream_buf = src.bounded("limits.stream_buf", l.stream_buf, STREAM_BUF)?;
        Ok(Config {
            source: src.file().map(Path::to_owned),
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
        let c = Config::from_str_for(None, "").unwrap();
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
}
