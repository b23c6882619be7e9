//! A text console for each simulated domain, shaped like a Xen guest's.
//!
//! On Xen, the guest's console is a ring that xenconsoled relays to a pty in dom0,
//! publishing the pty's path in `/local/domain/<id>/console/tty`; a console client
//! (`xl console`, xenvt's proxy) opens that path. Here the guest side is a shell on
//! a pty of its own, inside the domain (its processes carry the domain's
//! environment), and the host relays its bytes to a second pty whose path it
//! publishes the same way. The host keeps the published pty's own end open, so the
//! path stays valid while no client has it; guest output that no client drains is
//! dropped rather than blocking the guest, as a full console ring would be.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{killpg, Signal};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The console grid the guest's terminal reports (the proxy's default too).
pub const COLS: u16 = 80;
/// See [`COLS`].
pub const ROWS: u16 = 25;

/// How many quick exits in a row stop the respawning of the console program.
const MAX_QUICK_EXITS: u32 = 5;

/// A running console: the program on its guest-side pty, the relay, and the
/// published pty.
pub struct DomainConsole {
    tty: PathBuf,
    relay: JoinHandle<()>,
    pgid: std::sync::Arc<std::sync::atomic::AtomicI32>,
    /// The published pty's own end, held so its path stays valid.
    _published_slave: OwnedFd,
}

impl DomainConsole {
    /// Starts `cmd` as the console program of a domain whose processes carry
    /// `env`, and returns once the published pty exists.
    pub fn start(
        cmd: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        name: &str,
    ) -> io::Result<Self> {
        if cmd.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty console command",
            ));
        }
        let published = openpty(None, None).map_err(io::Error::from)?;
        let mut raw = tcgetattr(&published.slave).map_err(io::Error::from)?;
        cfmakeraw(&mut raw);
        tcsetattr(&published.slave, SetArg::TCSANOW, &raw).map_err(io::Error::from)?;
        let tty = std::fs::read_link(format!("/proc/self/fd/{}", published.slave.as_raw_fd()))?;
        set_nonblocking(published.master.as_fd())?;
        let out = async_fd(published.master)?;
        let pgid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
        let name = name.to_owned();
        let relay = tokio::spawn(run(cmd, env, out, pgid.clone(), name));
        Ok(Self {
            tty,
            relay,
            pgid,
            _published_slave: published.slave,
        })
    }

    /// The published pty's path (what goes in `console/tty`).
    pub fn tty(&self) -> &Path {
        &self.tty
    }
}

impl Drop for DomainConsole {
    fn drop(&mut self) {
        self.relay.abort();
        let pgid = self.pgid.load(std::sync::atomic::Ordering::Relaxed);
        if pgid > 0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(raw, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns `fd` (an `OwnedFd` is closed only when dropped,
    // which happens after the `AsyncFd` deregisters it), and `OwnedFd::as_raw_fd`
    // always returns the same descriptor.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Starts the console program on a fresh guest-side pty; returns the pty's
/// master end and the child.
fn spawn_program(
    cmd: &[OsString],
    env: &[(OsString, OsString)],
) -> io::Result<(AsyncFd<OwnedFd>, tokio::process::Child)> {
    let ws = Winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&ws), None).map_err(io::Error::from)?;
    let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
    let mut c = std::process::Command::new(&cmd[0]);
    c.args(&cmd[1..])
        .envs(env.iter().cloned())
        .env("TERM", "linux")
        .stdin(stdio(&pty.slave)?)
        .stdout(stdio(&pty.slave)?)
        .stderr(stdio(&pty.slave)?);
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // setsid(2) and ioctl(2), which are async-signal-safe; it touches no memory of
    // the parent's beyond reading its own stack.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            // Make the pty on stdin the session's controlling terminal.
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = tokio::process::Command::from(c)
        .kill_on_drop(true)
        .spawn()?;
    drop(pty.slave);
    set_nonblocking(pty.master.as_fd())?;
    let master = async_fd(pty.master)?;
    Ok((master, child))
}

/// Runs the console program (respawned when it exits, like a getty) and relays
/// its bytes to and from the published pty.
async fn run(
    cmd: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    out: AsyncFd<OwnedFd>,
    pgid: std::sync::Arc<std::sync::atomic::AtomicI32>,
    name: String,
) {
    let mut quick_exits = 0;
    loop {
        let (guest, mut child) = match spawn_program(&cmd, &env) {
            Ok(x) => x,
            Err(e) => {
                warn!(domain = %name, "cannot start the console program: {e}");
                return;
            }
        };
        pgid.store(
            child.id().map(|p| p as i32).unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        let started = Instant::now();
        relay(&guest, &out).await;
        let _ = child.kill().await;
        if started.elapsed() < Duration::from_secs(2) {
            quick_exits += 1;
            if quick_exits >= MAX_QUICK_EXITS {
                warn!(domain = %name, "the console program keeps exiting; console stopped");
                return;
            }
        } else {
            quick_exits = 0;
        }
        info!(domain = %name, "console program exited; starting it again");
    }
}

/// Copies bytes both ways until the guest side hangs up.
async fn relay(guest: &AsyncFd<OwnedFd>, out: &AsyncFd<OwnedFd>) {
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            r = guest.readable() => {
                let Ok(mut g) = r else { return };
                match g.try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf).map_err(io::Error::from)) {
                    Ok(Ok(0)) | Ok(Err(_)) => return, // EIO: the program and its session are gone
                    Ok(Ok(n)) => forward(out, &buf[..n]),
                    Err(_would_block) => {}
                }
            }
            r = out.readable() => {
                let Ok(mut g) = r else { return };
                match g.try_io(|fd| nix::unistd::read(fd.get_ref().as_raw_fd(), &mut buf).map_err(io::Error::from)) {
                    Ok(Ok(n)) if n > 0 => forward(guest, &buf[..n]),
                    Ok(_) => {}
                    Err(_would_block) => {}
                }
            }
        }
    }
}

/// Writes what fits now; the rest is dropped, as a full console ring drops it.
fn forward(to: &AsyncFd<OwnedFd>, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(to.get_ref(), data) {
            Ok(n) if n > 0 => data = &data[n..],
            _ => return,
        }
    }
}
