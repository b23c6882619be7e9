//! Transactions and the view that requests operate on.
//!
//! As in xenstored, a transaction records the generation of every node it
//! touches (or that the node was missing) and keeps its own copies of what it
//! changes. Commit fails with EAGAIN if any touched node changed meanwhile;
//! otherwise its changes are stored and its queued watch events fire.

use std::collections::HashMap;

use super::tree::{Node, Tree};
use super::watch::Event;
use super::wire::Errno;

/// An open transaction.
#[derive(Default)]
pub struct Txn {
    /// Changed nodes (`None`: deleted in this transaction).
    overlay: HashMap<String, Option<Node>>,
    /// Generation of each touched node when first touched (`None`: missing).
    seen: HashMap<String, Option<u64>>,
    /// Events to fire on commit.
    pub events: Vec<Event>,
    /// Change in nodes owned, per domain.
    delta: HashMap<u32, isize>,
    /// Whether the transaction created a node (commit re-checks the quota).
    created: bool,
}

/// Who is asking, and the limits that apply to them.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub domid: u32,
    pub privileged: bool,
}

/// The database as one request sees it: the committed tree, or a transaction
/// layered on it.
pub struct View<'a> {
    pub tree: &'a mut Tree,
    pub txn: Option<&'a mut Txn>,
    pub caller: Caller,
    /// Most nodes an unprivileged transaction may touch.
    pub txn_nodes_max: usize,
    /// Events produced by this request.
    pub events: Vec<Event>,
}

impl<'a> View<'a> {
    /// A view of the committed tree, or of `txn` over it.
    pub fn new(
        tree: &'a mut Tree,
        txn: Option<&'a mut Txn>,
        caller: Caller,
        txn_nodes_max: usize,
    ) -> Self {
        View {
            tree,
            txn,
            caller,
            txn_nodes_max,
            events: Vec::new(),
        }
    }

    fn touch(&mut self, path: &str) -> Result<(), Errno> {
        let Some(t) = self.txn.as_deref_mut() else {
            return Ok(());
        };
        if t.seen.contains_key(path) {
            return Ok(());
        }
        if !self.caller.privileged && t.seen.len() >= self.txn_nodes_max {
            return Err(Errno::NoSpc);
        }
        let g = self.tree.get(path).map(|n| n.gen);
        t.seen.insert(path.to_owned(), g);
        Ok(())
    }

    /// The node at `path` as this view sees it.
    pub fn get(&mut self, path: &str) -> Result<Option<Node>, Errno> {
        self.touch(path)?;
        if let Some(t) = self.txn.as_deref() {
            if let Some(n) = t.overlay.get(path) {
                return Ok(n.clone());
            }
        }
        Ok(self.tree.get(path).cloned())
    }

    /// Stores `node` at `path`; `old_owner` is the owner before (if it existed).
    pub fn put(&mut self, path: &str, node: Node, old_owner: Option<u32>) -> Result<(), Errno> {
        self.touch(path)?;
        match self.txn.as_deref_mut() {
            None => self.tree.put(path, node),
            Some(t) => {
                if let Some(o) = old_owner {
                    *t.delta.entry(o).or_default() -= 1;
                } else {
                    t.created = true;
                }
                *t.delta.entry(node.perms.owner()).or_default() += 1;
                t.overlay.insert(path.to_owned(), Some(node));
            }
        }
        Ok(())
    }

    /// Deletes the node at `path` owned by `owner` (no parent bookkeeping).
    pub fn del(&mut self, path: &str, owner: u32) -> Result<(), Errno> {
        self.touch(path)?;
        match self.txn.as_deref_mut() {
            None => {
                self.tree.remove(path);
            }
            Some(t) => {
                *t.delta.entry(owner).or_default() -= 1;
                t.overlay.insert(path.to_owned(), None);
            }
        }
        Ok(())
    }

    /// Nodes `domid` owns as this view sees it.
    pub fn owned_by(&self, domid: u32) -> usize {
        let base = self.tree.owned_by(domid) as isize;
        let d = self
            .txn
            .as_deref()
            .and_then(|t| t.delta.get(&domid).copied())
            .unwrap_or(0);
        (base + d).max(0) as usize
    }
}

/// Commits `txn`: EAGAIN on conflict, ENOSPC if an unprivileged transaction
/// that created nodes leaves a domain at or over `nodes_max`. On success the
/// events to fire are returned.
pub fn commit(
    tree: &mut Tree,
    txn: Txn,
    privileged: bool,
    nodes_max: usize,
) -> Result<Vec<Event>, Errno> {
    for (path, g) in &txn.seen {
        if tree.get(path).map(|n| n.gen) != *g {
            return Err(Errno::Again);
        }
    }
    if txn.created && !privileged {
        for (&d, &delta) in &txn.delta {
            if tree.owned_by(d) as isize + delta >= nodes_max as isize {
                return Err(Errno::NoSpc);
            }
        }
    }
    for (path, n) in txn.overlay {
        match n {
            Some(n) => tree.put(&path, n),
            None => {
                tree.remove(&path);
            }
        }
    }
    Ok(txn.events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::xenstored::perms::Perms;

    const PRIV: Caller = Caller {
        domid: 0,
        privileged: true,
    };

    fn node(v: &[u8]) -> Node {
        let mut n = Node::new(Perms::owned(0, 0));
        n.value = v.to_vec();
        n
    }

    #[test]
    fn isolated_until_commit() {
        let mut tree = Tree::new(Perms::owned(0, 0));
        tree.put("/a", node(b"1"));
        let mut t = Txn::default();
        {
            let mut v = View::new(&mut tree, Some(&mut t), PRIV, 1024);
            v.put("/a", node(b"2"), Some(0)).unwrap();
            assert_eq!(v.get("/a").unwrap().unwrap().value, b"2");
        }
        assert_eq!(tree.get("/a").unwrap().value, b"1");
        commit(&mut tree, t, true, 1000).unwrap();
        assert_eq!(tree.get("/a").unwrap().value, b"2");
    }

    #[test]
    fn conflict_on_read_node() {
        let mut tree = Tree::new(Perms::owned(0, 0));
        tree.put("/a", node(b"1"));
        let mut t = Txn::default();
        View::new(&mut tree, Some(&mut t), PRIV, 1024)
            .get("/a")
            .unwrap();
        tree.put("/a", node(b"other"));
        assert!(matches!(
            commit(&mut tree, t, true, 1000),
            Err(Errno::Again)
        ));
    }

    #[test]
    fn conflict_on_missing_node_created_meanwhile() {
        let mut tree = Tree::new(Perms::owned(0, 0));
        let mut t = Txn::default();
        assert!(View::new(&mut tree, Some(&mut t), PRIV, 1024)
            .get("/new")
            .unwrap()
            .is_none());
        tree.put("/new", node(b""));
        assert!(matches!(
            commit(&mut tree, t, true, 1000),
            Err(Errno::Again)
        ));
    }

    #[test]
    fn unrelated_change_commits() {
        let mut tree = Tree::new(Perms::owned(0, 0));
        tree.put("/a", node(b"1"));
        let mut t = Txn::default();
        View::new(&mut tree, Some(&mut t), PRIV, 1024)
            .get("/a")
            .unwrap();
        tree.put("/b", node(b"x"));
        assert!(commit(&mut tree, t, true, 1000).is_ok());
    }

    #[test]
    fn touched_nodes_quota() {
        let mut tree = Tree::new(Perms::owned(0, 0));
        let mut t = Txn::default();
        let guest = Caller {
            domid: 3,
            privileged: false,
        };
        let mut v = View::new(&mut tree, Some(&mut t), guest, 2);
        v.get("/a").unwrap();
        v.get("/b").unwrap();
        v.get("/a").unwrap();
        assert_eq!(v.get("/c"), Err(Errno::NoSpc));
    }
}
