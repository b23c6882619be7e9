//! The backend's TOML configuration, checked as a whole before anything starts.
//!
//! ```toml
//! run_dir = "/run/xenvt"        # per-guest socket directories go here
//! channel_path = "data/xenvt"   # where agents publish, under each guest's home
//! # domains = ["vm1", "7"]      # names or ids; absent = every domain
//!
//! [services.vnc]
//! deliver = "/run/xenvt-proxy/vnc.sock"  # guest -> dom0: connect here, PROXY v2 first
//! listen = true                          # dom0 -> guest: <run_dir>/<domain>/vnc.sock
//!
//! [guests.vm1]
//! group = "xenvt"               # vm1's sockets: directory 0750, sockets 0660, this group
//!
//! [control]                    # metrics and status, root only
//! socket = "/run/xenvt/backend.ctl"  # default: <run_dir>/backend.ctl
//! # listen = "127.0.0.1:9101"  # also on loopback TCP
//!
//! [limits]
//! max_streams = 256
//! stream_buf = 262144
//! hello_timeout_secs = 5
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use xenvt_ring::config::{
    valid_rel_path, Bounds, ConfigError, ConfigText, Load, MAX_STREAMS, STREAM_BUF,
};

use crate::{Error, Result};

/// The default socket directory.
pub const DEFAULT_RUN_DIR: &str = "/run/xenvt";
/// The control socket's file name in `run_dir` unless `[control] socket` says otherwise.
pub const CONTROL_NAME: &str = "backend.ctl";
/// `limits.hello_timeout_secs`: how long an agent has to answer our HELLO.
const HELLO_SECS: Bounds<u64> = Bounds {
    min: 1,
    max: 300,
    default: 5,
};

/// The checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: Option<PathBuf>,
    /// Root of the per-guest socket directories.
    pub run_dir: PathBuf,
    /// The control socket (`GET /metrics`, `GET /status`): root-only, 0600.
    pub control: PathBuf,
    /// Also serve the control endpoint on this loopback TCP address.
    pub control_tcp: Option<std::net::SocketAddr>,
    /// Agents' xenstore path, relative to each guest's home.
    pub channel_path: String,
    /// The guests to serve; `None`: all.
    pub domains: Option<Vec<DomainSel>>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
    /// Per-guest options, by domain name.
    pub guests: BTreeMap<String, GuestOpts>,
    /// Streams per guest.
    pub max_streams: u32,
    /// Receive buffer (credit) per stream.
    pub stream_buf: u32,
    /// How long an agent has to answer our HELLO.
    pub hello_timeout: Duration,
}

/// A guest selected by id or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainSel {
    /// By domain id.
    Id(u16),
    /// By domain name.
    Name(String),
}

impl DomainSel {
    /// A domain id if `s` is one, else a name.
    pub fn parse(s: &str) -> DomainSel {
        match s.parse::<u16>() {
            Ok(id) => DomainSel::Id(id),
            Err(_) => DomainSel::Name(s.to_owned()),
        }
    }
}

/// What the backend does for one service name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// guest -> dom0: the unix socket streams for this service are delivered to.
    pub deliver: Option<PathBuf>,
    /// dom0 -> guest: listen on `<run_dir>/<domain>/<service>.sock` per guest.
    pub listen: bool,
}

/// Options for one guest's sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestOpts {
    /// Group given access to the guest's sockets (name, and its id resolved at load).
    pub group: Option<(String, u32)>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    run_dir: Option<PathBuf>,
    channel_path: Option<String>,
    domains: Option<Vec<String>>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    guests: BTreeMap<String, RawGuest>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    control: RawControl,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    deliver: Option<PathBuf>,
    #[serde(default)]
    listen: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    group: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_streams: Option<u32>,
    stream_buf: Option<u32>,
    hello_timeout_secs: Option<u64>,
}

pub use xenvt_ring::config::valid_name;

impl Load for Config {
    type Error = Error;

    fn check(src: &ConfigText<'_>) -> Result<Config, ConfigError> {
        let raw: Raw = src.parse()?;
        let run_dir = raw.run_dir.unwrap_or_else(|| DEFAULT_RUN_DIR.into());
        if !run_dir.is_absolute() {
            return Err(src.error(
                "run_dir",
                format!("run_dir {} is relative", run_dir.display()),
                "set run_dir to an absolute path such as \"/run/xenvt\"",
            ));
        }
        let control = raw
            .control
            .socket
            .unwrap_or_else(|| run_dir.join(CONTROL_NAME));
        if !control.is_absolute() || control.file_name().is_none() {
            return Err(src.error(
                "control.socket",
                format!(
                    "control.socket {} is not an absolute path",
                    control.display()
                ),
                "set control.socket to an absolute path such as \"/run/xenvt/backend.ctl\"",
            ));
        }
        if let Some(a) = raw.control.listen {
            xenvt_ring::control::check_tcp(a).map_err(|m| {
                src.error(
                    "control.listen",
                    format!("control.listen: {m}"),
                    "use a loopback address such as \"127.0.0.1:9101\" (the endpoint has no password)",
                )
            })?;
        }
        let channel_path = raw.channel_path.unwrap_or_else(|| "data/xenvt".into());
        if !valid_rel_path(&channel_path) {
            return Err(src.error(
                "channel_path",
                format!("channel_path {channel_path:?} is not a relative xenstore path of plain components"),
                "set channel_path to a relative path such as \"data/xenvt\" (the agent's channel.path)",
            ));
        }
        let domains = raw
            .domains
            .map(|v| v.iter().map(|s| DomainSel::parse(s)).collect());
        let mut services = BTreeMap::new();
        for (name, s) in raw.services {
            if !valid_name(&name) {
                return Err(src.error_at(
                    &["services", &name],
                    format!(
                        "service name {name:?} is not 1 to 64 of A-Z a-z 0-9 . _ - (not starting with '.')"
                    ),
                    "rename the service with those characters only",
                ));
            }
            if let Some(d) = &s.deliver {
                if !d.is_absolute() {
                    return Err(src.error_at(
                        &["services", &name, "deliver"],
                        format!("services.{name}.deliver {} is relative", d.display()),
                        "set deliver to an absolute socket path such as \"/run/xenvt-proxy/vnc.sock\"",
                    ));
                }
            }
            if s.deliver.is_none() && !s.listen {
                return Err(src.error_at(
                    &["services", &name],
                    format!("services.{name} neither delivers nor listens"),
                    "set deliver = \"/path/to/service.sock\" or listen = true, or remove the table",
                ));
            }
            services.insert(
                name,
                Service {
                    deliver: s.deliver,
                    listen: s.listen,
                },
            );
        }
        let mut guests = BTreeMap::new();
        for (name, g) in raw.guests {
            let group = match g.group {
                None => None,
                Some(gname) => {
                    let key = ["guests", name.as_str(), "group"];
                    let gid = match nix::unistd::Group::from_name(&gname) {
                        Ok(Some(gr)) => gr.gid.as_raw(),
                        Ok(None) => {
                            return Err(src.error_at(
                                &key,
                                format!("guests.{name}.group: no group named {gname:?}"),
                                "create the group (groupadd) or set an existing one",
                            ))
                        }
                        Err(e) => {
                            return Err(src.error_at(
                                &key,
                                format!("guests.{name}.group {gname:?}: {e}"),
                                "check the system's group database, or remove group",
                            ))
                        }
                    };
                    Some((gname, gid))
                }
            };
            guests.insert(name, GuestOpts { group });
        }
        let l = raw.limits;
        let max_streams = src.bounded("limits.max_streams", l.max_streams, MAX_STREAMS)?;
        let stream_buf = src.bounded("limits.stream_buf", l.stream_buf, STREAM_BUF)?;
        let hello = src.bounded(
            "limits.hello_timeout_secs",
            l.hello_timeout_secs,
            HELLO_SECS,
        )?;
        Ok(Config {
            source: src.file().map(Path::to_owned),
            run_dir,
            control,
            control_tcp: raw.control.listen,
            channel_path,
            domains,
            services,
            guests,
            max_streams,
            stream_buf,
            hello_timeout: Duration::from_secs(hello),
        })
    }
}

impl Config {
    /// Applies the command line over the file: `--run-dir` (a control socket
    /// that followed run_dir keeps following it), `--control`, `--domain`.
    pub fn apply_flags(
        &mut self,
        run_dir: Option<&Path>,
        control: Option<&Path>,
        domains: &[String],
    ) -> Result<(), ConfigError> {
        if let Some(d) = run_dir {
            absolute_flag("--run-dir", d)?;
            let followed = self.control == self.run_dir.join(CONTROL_NAME);
            self.run_dir = d.to_owned();
            if followed {
                self.control = self.run_dir.join(CONTROL_NAME);
            }
        }
        if let Some(c) = control {
            absolute_flag("--control", c)?;
            self.control = c.to_owned();
        }
        if !domains.is_empty() {
            self.domains = Some(domains.iter().map(|s| DomainSel::parse(s)).collect());
        }
        Ok(())
    }

    /// Whether the guest `id` named `name` is one we serve.
    pub fn selects(&self, id: u16, name: Option<&str>) -> bool {
        match &self.domains {
            None => true,
            Some(sel) => sel.iter().any(|s| match s {
                DomainSel::Id(i) => *i == id,
                DomainSel::Name(n) => Some(n.as_str()) == name,
            }),
        }
    }

    /// The services we listen for per guest, in name order.
    pub fn listened(&self) -> Vec<String> {
        self.services
            .iter()
            .filter(|(_, s)| s.listen)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn absolute_flag(flag: &str, p: &Path) -> Result<(), ConfigError> {
    if p.is_absolute() {
        return Ok(());
    }
    Err(ConfigError::new(
        None,
        format!("{flag} {} is relative", p.display()),
        format!("give {flag} an absolute path"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let f = Some(Path::new("b.toml"));
        let mut c = Config::from_str_for(f, "domains = [\"vm1\"]").unwrap();
        c.apply_flags(Some(Path::new("/r")), None, &["3".into(), "vm2".into()])
            .unwrap();
        assert_eq!(c.control, Path::new("/r/backend.ctl"), "follows run_dir");
        assert_eq!(
            c.domains,
            Some(vec![DomainSel::Id(3), DomainSel::Name("vm2".into())])
        );
        let mut c = Config::from_str_for(f, "[control]\nsocket = \"/c/b.ctl\"").unwrap();
        c.apply_flags(Some(Path::new("/r")), None, &[]).unwrap();
        assert_eq!(c.control, Path::new("/c/b.ctl"), "set apart, stays");
        assert!(c.domains.is_none());
        c.apply_flags(None, Some(Path::new("/x.ctl")), &[]).unwrap();
        assert_eq!(c.control, Path::new("/x.ctl"));
        let e = c.apply_flags(Some(Path::new("r")), None, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: --run-dir r is relative; give --run-dir an absolute path"
        );
        assert!(c.apply_flags(None, Some(Path::new("x.ctl")), &[]).is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::from_str_for(None, "").unwrap();
        assert_eq!(c.run_dir, Path::new(DEFAULT_RUN_DIR));
        assert_eq!(c.control, Path::new("/run/xenvt/backend.ctl"));
        assert_eq!(c.channel_path, "data/xenvt");
        assert!(c.domains.is_none());
        assert!(c.services.is_empty());
        assert!(c.selects(5, None));
    }

    #[test]
    fn full_file_parses() {
        let c = Config::from_str_for(
            None,
            r#"
            run_dir = "/run/x"
            domains = ["vm1", "7"]
            [services.vnc]
            deliver = "/run/p/vnc.sock"
            listen = true
            [services.ssh]
            listen = true
            [guests.vm1]
            group = "root"
            [limits]
            max_streams = 4
            hello_timeout_secs = 2
            "#,
        )
        .unwrap();
        assert_eq!(
            c.domains,
            Some(vec![DomainSel::Name("vm1".into()), DomainSel::Id(7)])
        );
        assert!(c.selects(7, None) && c.selects(3, Some("vm1")) && !c.selects(3, Some("vm2")));
        assert_eq!(c.listened(), vec!["ssh", "vnc"]);
        assert_eq!(c.guests["vm1"].group, Some(("root".into(), 0)));
        assert_eq!(c.max_streams, 4);
        assert_eq!(c.hello_timeout, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let f = Path::new("backend.toml");
        let cases = [
            ("run_dir = \"rel\"", "absolute"),
            ("[services.\"a/b\"]\nlisten = true", "service name"),
            (
                "[services.v]\ndeliver = \"rel.sock\"",
                "absolute socket path",
            ),
            ("[services.v]", "neither"),
            ("[guests.vm1]\ngroup = \"no-such-group-xenvt\"", "no group"),
            ("[limits]\nstream_buf = 1", "stream_buf"),
            ("channel_path = \"../x\"", "channel_path"),
            ("extra = 1", "unknown field"),
            ("[control]\nsocket = \"x.ctl\"", "control.socket"),
            ("[control]\nlisten = \"10.0.0.1:9\"", "loopback"),
        ];
        for (text, want) in cases {
            let e = Config::from_str_for(Some(f), text).unwrap_err().to_string();
            assert!(e.starts_with("backend.toml:"), "{e}");
            assert!(e.contains(want), "{text:?} -> {e}");
        }
    }

    #[test]
    fn errors_give_the_line_and_the_fix() {
        let f = Path::new("/etc/xenvt/backend.toml");
        let text =
            "run_dir = \"/run/x\"\n\n[services.vnc]\nlisten = true\ndeliver = \"vnc.sock\"\n";
        let e = Config::from_str_for(Some(f), text).unwrap_err().to_string();
        assert_eq!(
            e,
            "/etc/xenvt/backend.toml:5:1: services.vnc.deliver vnc.sock is relative; \
             set deliver to an absolute socket path such as \"/run/xenvt-proxy/vnc.sock\""
        );
        let e = Config::from_str_for(Some(f), "[services.ssh]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/xenvt/backend.toml:1:11: services.ssh neither"),
            "{e}"
        );
        assert!(e.ends_with("or remove the table"), "{e}");
        let e = Config::from_str_for(Some(f), "[limits]\nmax_stream = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/xenvt/backend.toml:2:1: unknown field `max_stream`"),
            "{e}"
        );
        assert!(e.contains("did you mean `max_streams`?"), "{e}");
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = Config::from_str_for(None, include_str!("../dist/backend.toml")).unwrap();
        assert_eq!(c.run_dir, Path::new(DEFAULT_RUN_DIR));
        assert!(c.services["vnc"].listen);
        assert!(c.services["vnc"].deliver.is_some());
    }
}
