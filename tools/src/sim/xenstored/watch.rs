//! Watches and the events they match.

use super::perms::Perms;
use super::tree::is_child;

/// A registered watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Absolute path, or a special `@...` name.
    pub path: String,
    pub token: Vec<u8>,
    /// The home it was relative to, when the client gave a relative path:
    /// events are then reported relative to it too.
    pub relative_to: Option<String>,
}

/// A change to report.
#[derive(Clone, Debug)]
pub struct Event {
    pub path: String,
    /// Match only watches on exactly this path (removed descendants and
    /// special events); otherwise any watch at or above it matches.
    pub exact: bool,
    /// Permissions seen when the change happened (node, old node, parent): a
    /// watcher gets the event if any of them lets it read. Unused for `@`.
    pub perms: Vec<Perms>,
}

impl Watch {
    /// Whether `ev` fires this watch.
    pub fn matches(&self, ev: &Event) -> bool {
        if ev.exact {
            ev.path == self.path
        } else {
            !self.path.starts_with('@') && is_child(&ev.path, &self.path)
        }
    }

    /// The path to put in the WATCH_EVENT for `path`.
    pub fn reported<'a>(&self, path: &'a str) -> &'a str {
        match &self.relative_to {
            Some(base) if path.starts_with(base.as_str()) => {
                let rest = &path[base.len()..];
                rest.strip_prefix('/').unwrap_or(rest)
            }
            _ => path,
        }
    }

    /// The WATCH_EVENT payload for `path`: `<path>\0<token>\0`.
    pub fn event_payload(&self, path: &str) -> Vec<u8> {
        let p = self.reported(path);
        let mut out = Vec::with_capacity(p.len() + self.token.len() + 2);
        out.extend_from_slice(p.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.token);
        out.push(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(path: &str, rel: Option<&str>) -> Watch {
        Watch {
            path: path.into(),
            token: b"tok".to_vec(),
            relative_to: rel.map(Into::into),
        }
    }

    fn ev(path: &str, exact: bool) -> Event {
        Event {
            path: path.into(),
            exact,
            perms: vec![],
        }
    }

    #[test]
    fn matching() {
        let a = w("/a", None);
        assert!(a.matches(&ev("/a", false)));
        assert!(a.matches(&ev("/a/b", false)));
        assert!(!a.matches(&ev("/ab", false)));
        assert!(!a.matches(&ev("/", false)));
        assert!(!a.matches(&ev("/a/b", true)));
        assert!(a.matches(&ev("/a", true)));
        let s = w("@releaseDomain", None);
        assert!(s.matches(&ev("@releaseDomain", true)));
        assert!(!s.matches(&ev("/x", false)));
        assert!(w("/", None).matches(&ev("/x/y", false)));
    }

    #[test]
    fn relative_reporting() {
        let r = w("/local/domain/3/data", Some("/local/domain/3"));
        assert_eq!(r.reported("/local/domain/3/data/x"), "data/x");
        assert_eq!(
            r.event_payload("/local/domain/3/data"),
            b"data\0tok\0".to_vec()
        );
        assert_eq!(w("/a", None).reported("/a/b"), "/a/b");
    }
}
