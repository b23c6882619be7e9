//! A guest's listening sockets: `<run_dir>/<domain>/<service>.sock`.
//!
//! The directory is 0700 and the sockets 0600, owned by the backend's user
//! (root), unless the config names a group for that guest: then 0750 and 0660
//! with that group. The directory is the real gate (connecting needs search
//! permission on it); the socket modes back it up. Everything is removed when
//! the guest goes, and a directory left by a previous backend is replaced.
//! A backend killed with -9 cleans nothing up: at start-up the next one
//! removes the guest directories nobody serves any more (see
//! [`remove_stale_guests`]).

use std::fs::{DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// One guest's socket directory and listeners; dropping it removes them.
#[derive(Debug)]
pub struct GuestSockets {
    dir: PathBuf,
    /// (service, listener), in the order asked for.
    pub listeners: Vec<(String, UnixListener)>,
}

fn chgrp(p: &Path, gid: u32) -> io::Result<()> {
    nix::unistd::chown(p, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(io::Error::from)
}

/// Makes `run_dir` (0755, so group members can reach their guests' directories)
/// and removes the guest directories an earlier backend left behind.
pub fn prepare_run_dir(run_dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(run_dir)?;
    match remove_stale_guests(run_dir) {
        Ok(gone) if gone.is_empty() => {}
        Ok(gone) => {
            let shown: Vec<String> = gone
                .iter()
                .take(STALE_NAMES_LOGGED)
                .map(|n| n.escape_debug().to_string())
                .collect();
            tracing::info!(
                run_dir = %run_dir.display(),
                count = gone.len(),
                "removed stale socket directories of guests no longer served: {}{}",
                shown.join(" "),
                if gone.len() > shown.len() { " ..." } else { "" }
            );
        }
        // Not fatal: what is stale only gets in the way of a guest whose
        // directory is about to be replaced anyway.
        Err(e) => {
            tracing::warn!(run_dir = %run_dir.display(), "cannot clear stale socket directories: {e}")
        }
    }
    Ok(())
}

/// Names of removed directories put in the log line.
const STALE_NAMES_LOGGED: usize = 8;

/// Removes, from `run_dir`, the guest directories that are ours and dead:
/// real directories owned by this user that hold only `<service>.sock`
/// sockets, none of which has a listener (a connect is refused). Anything
/// else there (the control socket, other programs' files, a directory with
/// other content or a live socket) is left alone. Returns the names removed.
///
/// At start-up no guest of this backend is live yet, so a dead directory
/// belongs to a domain that is gone, or to one whose sockets will be made
/// afresh when its agent is reached.
pub fn remove_stale_guests(run_dir: &Path) -> io::Result<Vec<String>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let me = nix::unistd::geteuid().as_raw();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(run_dir)? {
        let entry = entry?;
        // symlink_metadata: a link is never followed, never removed.
        let Ok(m) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if !m.is_dir() || m.uid() != me {
            continue;
        }
        let dir = entry.path();
        let Ok(inner) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut sockets = 0usize;
        let mut ours = true;
        for e in inner {
            let Ok(e) = e else {
                ours = false;
                break;
            };
            let p = e.path();
            let is_dead_socket = std::fs::symlink_metadata(&p)
                .is_ok_and(|m| m.file_type().is_socket() && m.uid() == me)
                && p.extension().is_some_and(|x| x == "sock")
                && !listening(&p);
            if !is_dead_socket {
                ours = false;
                break;
            }
            sockets += 1;
        }
        if !ours || sockets == 0 {
            continue;
        }
        std::fs::remove_dir_all(&dir)?;
        removed.push(entry.file_name().to_string_lossy().into_owned());
    }
    removed.sort();
    Ok(removed)
}

/// Whether a process listens on the unix socket at `path`. A non-blocking
/// connect never waits: refused means nobody listens; anything else
/// (accepted, backlog full, no permission) counts as live.
fn listening(path: &Path) -> bool {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let Ok(addr) = UnixAddr::new(path) else {
        return true;
    };
    let Ok(fd) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return true;
    };
    !matches!(
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr),
        Err(nix::errno::Errno::ECONNREFUSED)
    )
}

impl GuestSockets {
    /// Creates `<run_dir>/<name>/` and a listener per service in it. `name` and
    /// the services must already be checked as plain file names.
    pub fn create(
        run_dir: &Path,
        name: &str,
        services: &[String],
        gid: Option<u32>,
    ) -> io::Result<GuestSockets> {
        let dir = run_dir.join(name);
        remove_stale(&dir)?;
        let (dmode, smode) = if gid.is_some() {
            (0o750, 0o660)
        } else {
            (0o700, 0o600)
        };
        DirBuilder::new().mode(0o700).create(&dir)?;
        // From here on, dropping `me` removes what exists.
        let mut me = GuestSockets {
            dir,
            listeners: Vec::new(),
        };
        if let Some(g) = gid {
            chgrp(&me.dir, g)?;
        }
        std::fs::set_permissions(&me.dir, Permissions::from_mode(dmode))?;
        for s in services {
            let path = me.dir.join(format!("{s}.sock"));
            let l = UnixListener::bind(&path)?;
            if let Some(g) = gid {
                chgrp(&path, g)?;
            }
            std::fs::set_permissions(&path, Permissions::from_mode(smode))?;
            me.listeners.push((s.clone(), l));
        }
        Ok(me)
    }

    /// The guest's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Removes a directory (or anything else) at `dir` left by an earlier run.
fn remove_stale(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(dir),
        Ok(_) => std::fs::remove_file(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Drop for GuestSockets {
    fn drop(&mut self) {
        self.listeners.clear();
        if let Err(e) = remove_stale(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), "cannot remove socket directory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn private_by_default_and_removed_on_drop() {
        let t = tempfile::tempdir().unwrap();
        let s = GuestSockets::create(t.path(), "vm1", &["vnc".into(), "ssh".into()], None).unwrap();
        let d = t.path().join("vm1");
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("vnc.sock")), 0o600);
        assert_eq!(mode(&d.join("ssh.sock")), 0o600);
        assert_eq!(
            std::fs::metadata(&d).unwrap().uid(),
            nix::unistd::geteuid().as_raw()
        );
        drop(s);
        assert!(!d.exists());
    }

    #[tokio::test]
    async fn group_access_when_configured() {
        let t = tempfile::tempdir().unwrap();
        // Our own primary group: chgrp to it works without privilege.
        let gid = nix::unistd::getegid().as_raw();
        let _s = GuestSockets::create(t.path(), "vm2", &["vnc".into()], Some(gid)).unwrap();
        let d = t.path().join("vm2");
        assert_eq!(mode(&d), 0o750);
        assert_eq!(mode(&d.join("vnc.sock")), 0o660);
        assert_eq!(std::fs::metadata(&d).unwrap().gid(), gid);
        assert_eq!(std::fs::metadata(d.join("vnc.sock")).unwrap().gid(), gid);
    }

    #[tokio::test]
    async fn stale_directory_is_replaced() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("vm3");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("vnc.sock"), b"stale").unwrap();
        let _s = GuestSockets::create(t.path(), "vm3", &["vnc".into()], None).unwrap();
        assert!(std::fs::metadata(d.join("vnc.sock"))
            .unwrap()
            .file_type()
            .is_socket_like());
    }

    trait SocketLike {
        fn is_socket_like(&self) -> bool;
    }
    impl SocketLike for std::fs::FileType {
        fn is_socket_like(&self) -> bool {
            use std::os::unix::fs::FileTypeExt;
            self.is_socket()
        }
    }
}
