//! The node database: every node keyed by its absolute path, with its value,
//! permissions, ordered child names and a generation number that changes on
//! every modification (transactions use it to detect conflicts).

use std::collections::HashMap;

use super::perms::Perms;

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub value: Vec<u8>,
    pub perms: Perms,
    /// Child leaf names, in creation order (xenstored appends).
    pub children: Vec<String>,
    /// Generation of the last change; reassigned whenever the node is stored.
    pub gen: u64,
}

impl Node {
    /// An empty node with `perms`.
    pub fn new(perms: Perms) -> Self {
        Node {
            value: Vec::new(),
            perms,
            children: Vec::new(),
            gen: 0,
        }
    }

    /// The size xenstored charges against the node-size quota: its record
    /// header (20 bytes), 8 bytes per permission, the value and the child list.
    pub fn record_size(&self) -> usize {
        20 + 8 * self.perms.len()
            + self.value.len()
            + self.children.iter().map(|c| c.len() + 1).sum::<usize>()
    }
}

/// The committed database.
pub struct Tree {
    nodes: HashMap<String, Node>,
    gen: u64,
    owned: HashMap<u32, usize>,
}

impl Tree {
    /// A database holding only `/` with `perms`.
    pub fn new(root_perms: Perms) -> Self {
        let mut t = Tree {
            nodes: HashMap::new(),
            gen: 0,
            owned: HashMap::new(),
        };
        t.put("/", Node::new(root_perms));
        t
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Stores `node` at `path` with a fresh generation, keeping owner counts.
    pub fn put(&mut self, path: &str, mut node: Node) {
        self.gen += 1;
        node.gen = self.gen;
        *self.owned.entry(node.perms.owner()).or_default() += 1;
        if let Some(old) = self.nodes.insert(path.to_owned(), node) {
            self.dec_owner(old.perms.owner());
        }
    }

    /// Removes the node at `path` alone (callers fix the parent's child list).
    pub fn remove(&mut self, path: &str) -> Option<Node> {
        let old = self.nodes.remove(path)?;
        self.dec_owner(old.perms.owner());
        Some(old)
    }

    fn dec_owner(&mut self, domid: u32) {
        if let Some(c) = self.owned.get_mut(&domid) {
            *c -= 1;
            if *c == 0 {
                self.owned.remove(&domid);
            }
        }
    }

    /// How many nodes `domid` owns.
    pub fn owned_by(&self, domid: u32) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// Per-domain node counts.
    pub fn owner_counts(&self) -> &HashMap<u32, usize> {
        &self.owned
    }

    /// Every path, for whole-tree sweeps (domain release).
    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Mutable access without touching the generation (for bookkeeping that
    /// is not a client-visible change, e.g. ignoring a dead domain's grants).
    pub fn get_mut_quiet(&mut self, path: &str) -> Option<&mut Node> {
        self.nodes.get_mut(path)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// The parent of an absolute path (`/` for top-level nodes). `path` is not `/`.
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The last component of an absolute path other than `/`.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `parent`'s child called `name`.
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `child` is `parent` or below it (everything is below `/`).
pub fn is_child(child: &str, parent: &str) -> bool {
    if parent == "/" {
        return true;
    }
    child.starts_with(parent) && matches!(child.as_bytes().get(parent.len()), None | Some(b'/'))
}

/// xenstored's node-name check: absolute, no trailing or doubled slash, only
/// `[A-Za-z0-9-/_@]`, and at most `max_rel` bytes below `/local/domain/<id>/`
/// (or in total, for paths outside a domain's home).
pub fn valid_path(path: &str, max_rel: usize) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    if path.ends_with('/') && path != "/" {
        return false;
    }
    if path.contains("//") {
        return false;
    }
    if path.len() > home_prefix_len(path) + max_rel {
        return false;
    }
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

/// Length of a leading `/local/domain/<up to 5 digits>/`, else 0.
fn home_prefix_len(path: &str) -> usize {
    const P: &str = "/local/domain/";
    let Some(rest) = path.strip_prefix(P) else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 5 || rest.as_bytes().get(digits) != Some(&b'/') {
        return 0;
    }
    P.len() + digits + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::xenstored::perms::{Perms, READ};

    #[test]
    fn path_helpers() {
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/a/b/c"), "/a/b");
        assert_eq!(basename("/a/b/c"), "c");
        assert_eq!(child("/", "x"), "/x");
        assert_eq!(child("/a", "x"), "/a/x");
        assert!(is_child("/a/b", "/a"));
        assert!(is_child("/a", "/a"));
        assert!(!is_child("/ab", "/a"));
        assert!(is_child("/ab", "/"));
    }

    #[test]
    fn path_validation() {
        for ok in ["/", "/a", "/a-b/c_d/@x", "/local/domain/1/data"] {
            assert!(valid_path(ok, 2048), "{ok}");
        }
        for bad in ["", "a", "/a/", "/a//b", "/a b", "/a.b", "/é"] {
            assert!(!valid_path(bad, 2048), "{bad}");
        }
        let long = format!("/{}", "a".repeat(2048));
        assert!(!valid_path(&long, 2048));
        let home = format!("/local/domain/7/{}", "a".repeat(2048));
        assert!(valid_path(&home, 2048));
        let home = format!("/local/domain/7/{}", "a".repeat(2049));
        assert!(!valid_path(&home, 2048));
    }

    #[test]
    fn generations_and_owner_counts() {
        let mut t = Tree::new(Perms::owned(0, 0));
        let g0 = t.get("/").unwrap().gen;
        t.put("/a", Node::new(Perms::owned(3, READ)));
        t.put("/b", Node::new(Perms::owned(3, READ)));
        assert!(t.get("/a").unwrap().gen > g0);
        assert_eq!(t.owned_by(3), 2);
        t.put("/a", Node::new(Perms::owned(0, READ)));
        assert_eq!(t.owned_by(3), 1);
        assert_eq!(t.owned_by(0), 2);
        t.remove("/b");
        assert_eq!(t.owned_by(3), 0);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn record_size_counts_everything() {
        let mut n = Node::new(Perms::owned(0, 0).with(1, READ));
        n.value = b"abc".to_vec();
        n.children = vec!["xy".into()];
        assert_eq!(n.record_size(), 20 + 16 + 3 + 3);
    }
}
