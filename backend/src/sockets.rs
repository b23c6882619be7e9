//! A guest's listening sockets: `<run_dir>/<domain>/<service>.sock`.
//!
//! The directory is 0700 and the sockets 0600, owned by the backend's user
//! (root), unless the config names a group for that guest: then 0750 and 0660
//! with that group. The directory is the real gate (connecting needs search
//! permission on it); the socket modes back it up. Everything is removed when
//! the guest goes, and a directory left by a previous backend is replaced.

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

/// Makes `run_dir` (0755, so group members can reach their guests' directories).
pub fn prepare_run_dir(run_dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(run_dir)
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
