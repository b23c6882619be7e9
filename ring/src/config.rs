//! What the three daemons share when they load a TOML configuration: an error
//! that names the file, the line and column, the problem and the fix, and a
//! lookup of where a key sits in the text so semantic checks (made after
//! deserialising) can point at the offending line too.
//!
//! Every message reads `FILE:LINE:COL: PROBLEM; FIX`, the fix being an
//! instruction ("set X", "remove Y", "use one of A, B").

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration error, ready to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file; `None` for built-in text or flags.
    pub file: Option<PathBuf>,
    /// 1-based line and column of the offending key or value, when known.
    pub at: Option<(usize, usize)>,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(p) => write!(f, "{}", p.display())?,
            None => write!(f, "configuration")?,
        }
        if let Some((l, c)) = self.at {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": {}; {}", self.problem, self.fix)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error not tied to a place in a file (a flag, an unreadable file).
    pub fn new(
        file: Option<&Path>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.map(Path::to_owned),
            at: None,
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// A daemon's configuration: its checks over a [`ConfigText`], and the loading
/// around them that every daemon does the same way.
pub trait Load: Sized {
    /// The crate's error; a [`ConfigError`] converts into it.
    type Error: From<ConfigError>;

    /// Parses and checks the text, pointing errors at their keys.
    fn check(src: &ConfigText<'_>) -> Result<Self, ConfigError>;

    /// Parses and checks `text`; `file` names it in errors.
    fn from_str_for(file: Option<&Path>, text: &str) -> Result<Self, Self::Error> {
        Ok(Self::check(&ConfigText::new(file, text))?)
    }

    /// Reads and checks `file`.
    fn load(file: &Path) -> Result<Self, Self::Error> {
        let text = read(file)?;
        Self::from_str_for(Some(file), &text)
    }

    /// `given` (`--config`) if set; else `default` if that file exists; else
    /// the built-in defaults (an empty text).
    fn load_or_default(given: Option<&Path>, default: &Path) -> Result<Self, Self::Error> {
        match given {
            Some(f) => Self::load(f),
            None if default.exists() => Self::load(default),
            None => Self::from_str_for(None, ""),
        }
    }
}

/// Whether `s` is a safe single file-name component: 1 to 64 of
/// `A-Z a-z 0-9 . _ -`, not starting with a dot. Service and domain names
/// become socket paths in dom0, so nothing else is allowed there.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `p` is a relative xenstore path of [`valid_name`] components, at most
/// 256 bytes: where an agent publishes its channel under its domain's home (the
/// agent's `channel.path`, the backend's `channel_path`).
pub fn valid_rel_path(p: &str) -> bool {
    !p.is_empty() && p.len() <= 256 && p.split('/').all(valid_name)
}

/// A number a configuration may set: the range it must lie in, and its value
/// when unset.
#[derive(Clone, Copy, Debug)]
pub struct Bounds<T> {
    /// The smallest allowed value.
    pub min: T,
    /// The largest allowed value.
    pub max: T,
    /// The value when the key is absent.
    pub default: T,
}

/// Streams per channel (the agent's and the backend's `limits.max_streams`).
pub const MAX_STREAMS: Bounds<u32> = Bounds {
    min: 1,
    max: 65536,
    default: 256,
};

/// Receive buffer per stream (`limits.stream_buf`): a page at least, and a bound
/// on what one stream can make its peer hold.
pub const STREAM_BUF: Bounds<u32> = Bounds {
    min: 4096,
    max: 16 << 20,
    default: 256 << 10,
};

/// Reads a configuration file whole.
pub fn read(file: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigError::new(
            Some(file),
            format!("cannot read the file: {e}"),
            "check the path given with --config and that the file is readable",
        )
    })
}

/// One configuration text, with what is needed to point into it.
pub struct ConfigText<'a> {
    file: Option<&'a Path>,
    text: &'a str,
    doc: Option<toml_edit::Document<&'a str>>,
}

impl<'a> ConfigText<'a> {
    /// `text`, read from `file` (named in errors).
    pub fn new(file: Option<&'a Path>, text: &'a str) -> Self {
        // A syntax error here is reported by `parse` with its own position.
        let doc = toml_edit::Document::parse(text).ok();
        Self { file, text, doc }
    }

    /// Deserialises the text; syntax, type and unknown-key errors carry the
    /// position the parser gives, and a fix.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(self.text).map_err(|e| {
            let msg = e.message().trim_end().to_owned();
            let fix = fix_for(&msg);
            ConfigError {
                file: self.file.map(Path::to_owned),
                at: e.span().map(|s| self.line_col(s.start)),
                problem: msg.replace('\n', " "),
                fix,
            }
        })
    }

    /// An error at `key`, a dotted path (`viewer.listen`, `domain.2.port`:
    /// numbers index arrays). Points at the deepest part of the path present
    /// in the text: a missing key is reported at its table.
    pub fn error(
        &self,
        key: &str,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.map(Path::to_owned),
            at: self.locate(key),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// `value` (the key `key`) if it lies within `b`, `b.default` if unset.
    pub fn bounded<T>(&self, key: &str, value: Option<T>, b: Bounds<T>) -> Result<T, ConfigError>
    where
        T: PartialOrd + Copy + fmt::Display,
    {
        let v = value.unwrap_or(b.default);
        if v < b.min || v > b.max {
            return Err(self.error(
                key,
                format!("{key} {v} is outside {}..={}", b.min, b.max),
                format!(
                    "set {key} between {} and {} ({} is the default)",
                    b.min, b.max, b.default
                ),
            ));
        }
        Ok(v)
    }

    /// The file the text came from, if any.
    pub fn file(&self) -> Option<&'a Path> {
        self.file
    }

    /// [`error`](Self::error) for a path given as its parts, for keys that
    /// may hold dots themselves (a service named `a.b`).
    pub fn error_at(
        &self,
        path: &[&str],
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.map(Path::to_owned),
            at: self.locate_parts(path),
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// Line and column (1-based) of `key`, as far as it is found.
    pub fn locate(&self, key: &str) -> Option<(usize, usize)> {
        let segs: Vec<&str> = key.split('.').filter(|s| !s.is_empty()).collect();
        self.locate_parts(&segs)
    }

    /// Line and column (1-based) of the key at `path`, as far as it is found.
    pub fn locate_parts(&self, path: &[&str]) -> Option<(usize, usize)> {
        let doc = self.doc.as_ref()?;
        find(doc.as_item(), path, None).map(|s| self.line_col(s.start))
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let col = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
        (line, col)
    }
}

type Span = Option<Range<usize>>;

/// The span of the deepest part of `segs` present under `item`.
fn find(item: &toml_edit::Item, segs: &[&str], best: Span) -> Span {
    use toml_edit::Item;
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    match item {
        Item::Table(t) => find_table(t, segs, best),
        Item::ArrayOfTables(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
            Some(t) => find_table(t, rest, t.span().or(best)),
            None => best,
        },
        Item::Value(v) => find_value(v, segs, best),
        Item::None => best,
    }
}

fn find_table(t: &toml_edit::Table, segs: &[&str], best: Span) -> Span {
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    match t.get_key_value(seg) {
        Some((k, v)) => find(v, rest, k.span().or_else(|| v.span()).or(best)),
        None => best,
    }
}

fn find_value(v: &toml_edit::Value, segs: &[&str], best: Span) -> Span {
    use toml_edit::Value;
    let Some((seg, rest)) = segs.split_first() else {
        return best;
    };
    match v {
        Value::Array(a) => match seg.parse::<usize>().ok().and_then(|i| a.get(i)) {
            Some(n) => find_value(n, rest, n.span().or(best)),
            None => best,
        },
        Value::InlineTable(t) => match t.get_key_value(seg) {
            Some((k, v)) => find(v, rest, k.span().or_else(|| v.span()).or(best)),
            None => best,
        },
        _ => best,
    }
}

/// Names between backquotes in a serde message.
fn quoted(msg: &str) -> Vec<&str> {
    msg.split('`').skip(1).step_by(2).collect()
}

/// The closest of `candidates` to `word`, if it is close enough to be a typo.
pub fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(s, _)| *s >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The fix for a deserialiser message.
fn fix_for(msg: &str) -> String {
    let names = quoted(msg);
    if msg.starts_with("unknown field") || msg.starts_with("unknown variant") {
        let what = if msg.starts_with("unknown field") {
            "key"
        } else {
            "value"
        };
        let Some((bad, rest)) = names.split_first() else {
            return format!("remove this {what}");
        };
        if let Some(m) = did_you_mean(bad, rest) {
            return format!("did you mean `{m}`? rename it, or remove `{bad}`");
        }
        if rest.is_empty() {
            return format!("remove `{bad}`: nothing is allowed here");
        }
        let list = rest
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        return format!("remove `{bad}`, or use one of {list}");
    }
    if msg.starts_with("missing field") {
        if let Some(n) = names.first() {
            return format!("set `{n}` here");
        }
    }
    if msg.starts_with("duplicate key") {
        return "remove one of the two".into();
    }
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        return "give a value of the expected type (see the example config)".into();
    }
    "correct the TOML syntax here".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        run_dir: Option<String>,
        max_streams: Option<u32>,
        #[serde(default)]
        svc: std::collections::BTreeMap<String, S>,
        #[serde(default)]
        domain: Vec<S>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct S {
        port: Option<u16>,
        listen: Option<bool>,
    }

    fn f() -> &'static Path {
        Path::new("x.toml")
    }

    #[test]
    fn unknown_keys_get_a_line_and_a_did_you_mean() {
        let text = "run_dir = \"/r\"\nmax_stream = 4\n";
        let e = ConfigText::new(Some(f()), text).parse::<T>().unwrap_err();
        assert_eq!(e.at, Some((2, 1)), "{e}");
        let s = e.to_string();
        assert!(
            s.starts_with("x.toml:2:1: unknown field `max_stream`"),
            "{s}"
        );
        assert!(s.ends_with("did you mean `max_streams`? rename it, or remove `max_stream`"));
        let e = ConfigText::new(Some(f()), "zzz = 1")
            .parse::<T>()
            .unwrap_err();
        assert!(
            e.fix.starts_with("remove `zzz`, or use one of `run_dir`"),
            "{e}"
        );
    }

    #[test]
    fn type_and_syntax_errors_have_positions() {
        let e = ConfigText::new(Some(f()), "\n\nmax_streams = \"x\"")
            .parse::<T>()
            .unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(3), "{e}");
        assert!(e.fix.contains("expected type"), "{e}");
        let e = ConfigText::new(Some(f()), "run_dir = \n")
            .parse::<T>()
            .unwrap_err();
        assert_eq!(e.at.map(|a| a.0), Some(1), "{e}");
        assert!(e.fix.contains("syntax"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let text = "run_dir = \"r\"\n\n[svc.vnc]\nlisten = true\nport = 0\n\n[[domain]]\nport = 1\n\n[[domain]]\nlisten = true\nport = 2\n";
        let c = ConfigText::new(Some(f()), text);
        assert_eq!(c.locate("run_dir"), Some((1, 1)));
        assert_eq!(c.locate("svc.vnc.port"), Some((5, 1)));
        assert_eq!(c.locate("svc.vnc"), Some((3, 6)));
        // A missing key falls back to its table.
        assert_eq!(c.locate("svc.vnc.nothing").map(|a| a.0), Some(3));
        assert_eq!(c.locate("domain.1.port"), Some((12, 1)));
        assert_eq!(c.locate("domain.0.port"), Some((8, 1)));
        assert_eq!(c.locate("nothing"), None);
        let c2 = ConfigText::new(None, "[svc.\"a.b\"]\nport = 1\n");
        assert_eq!(c2.locate_parts(&["svc", "a.b", "port"]), Some((2, 1)));
        let e = c.error(
            "run_dir",
            "run_dir \"r\" is relative",
            "set an absolute path",
        );
        assert_eq!(
            e.to_string(),
            "x.toml:1:1: run_dir \"r\" is relative; set an absolute path"
        );
    }

    #[test]
    fn inline_values_are_found() {
        let text = "a = [\"x\",\n  \"y\"]\nb = { c = 1, d = 2 }\n";
        let c = ConfigText::new(None, text);
        assert_eq!(c.locate("a.1"), Some((2, 3)));
        assert_eq!(c.locate("b.d"), Some((3, 14)));
        assert!(c
            .error("a", "p", "f")
            .to_string()
            .starts_with("configuration:1:1: p; f"));
    }

    #[test]
    fn bounded_numbers_name_the_range_and_the_default() {
        let c = ConfigText::new(Some(f()), "[limits]\nmax_streams = 0\n");
        assert_eq!(c.bounded("limits.max_streams", None, MAX_STREAMS), Ok(256));
        assert_eq!(
            c.bounded("limits.max_streams", Some(65536), MAX_STREAMS),
            Ok(65536)
        );
        let e = c
            .bounded("limits.max_streams", Some(0), MAX_STREAMS)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.toml:2:1: limits.max_streams 0 is outside 1..=65536; \
             set limits.max_streams between 1 and 65536 (256 is the default)"
        );
        assert!(c
            .bounded("limits.stream_buf", Some(4095), STREAM_BUF)
            .is_err());
    }

    #[derive(Debug)]
    struct Port(u16);

    impl Load for Port {
        type Error = ConfigError;
        fn check(src: &ConfigText<'_>) -> Result<Self, ConfigError> {
            let raw: S = src.parse()?;
            Ok(Port(raw.port.unwrap_or(1)))
        }
    }

    #[test]
    fn load_or_default_takes_the_given_file_then_the_default_one_then_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let given = dir.path().join("given.toml");
        let default = dir.path().join("default.toml");
        std::fs::write(&given, "port = 2").unwrap();
        assert_eq!(Port::load_or_default(None, &default).unwrap().0, 1);
        std::fs::write(&default, "port = 3").unwrap();
        assert_eq!(Port::load_or_default(None, &default).unwrap().0, 3);
        assert_eq!(Port::load_or_default(Some(&given), &default).unwrap().0, 2);
        let missing = dir.path().join("missing.toml");
        let e = Port::load_or_default(Some(&missing), &default).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        std::fs::write(&default, "prot = 3").unwrap();
        let e = Port::load_or_default(None, &default).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:1:1: unknown field `prot`", default.display())),
            "{e}"
        );
    }

    #[test]
    fn names_and_paths() {
        assert!(valid_name("vm-1.a_b"));
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_rel_path("data/xenvt"));
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "a/",
            &format!("{}a", "a/".repeat(128)),
        ] {
            assert!(!valid_rel_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn did_you_mean_only_for_near_words() {
        assert_eq!(did_you_mean("lisen", &["listen", "port"]), Some("listen"));
        assert_eq!(did_you_mean("qqq", &["listen", "port"]), None);
    }
}
