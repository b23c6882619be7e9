//! Guest consoles for tests: a pty the proxy opens by path, with or without a shell.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::pty::{openpty, Winsize};
use xenvt_proxy::console::{Console, ConsoleConfig};
use xenvt_proxy::rfb::Framebuffer;

/// A guest console: a shell (or nothing) behind a pty whose slave the proxy opens.
pub struct GuestConsole {
    /// The path the proxy opens.
    pub path: PathBuf,
    /// The xenconsoled side: what the guest writes appears here, typed input comes out.
    pub master: std::fs::File,
    _slave: OwnedFd,
    shell: Option<Child>,
}

impl Drop for GuestConsole {
    fn drop(&mut self) {
        if let Some(c) = &mut self.shell {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn copy_thread(mut from: std::fs::File, mut to: std::fs::File) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

/// A bare console pty (the test writes the guest's output itself).
pub fn bare_console() -> GuestConsole {
    let p = openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&p.slave).expect("ttyname");
    // Raw from the start, as xenconsoled makes its pty: no echo of the guest's output
    // back into its input while nobody has the console open.
    let mut t = nix::sys::termios::tcgetattr(&p.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&p.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    GuestConsole {
        path,
        master: std::fs::File::from(p.master),
        _slave: p.slave,
        shell: None,
    }
}

/// A console with `sh -i` on it (prompt `$ `), relayed as xenconsoled would.
pub fn shell_console() -> GuestConsole {
    let ws = Winsize {
        ws_row: 25,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let s = openpty(Some(&ws), None).expect("openpty");
    let mut cmd = Command::new("sh");
    cmd.arg("-i")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PS1", "$ ")
        .env("TERM", "xterm")
        .stdin(Stdio::from(s.slave.try_clone().unwrap()))
        .stdout(Stdio::from(s.slave.try_clone().unwrap()))
        .stderr(Stdio::from(s.slave));
    // SAFETY: the closure runs in the child between fork and exec and calls only setsid
    // and ioctl, which are async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let shell = cmd.spawn().expect("spawn sh");
    let mut g = bare_console();
    let shell_master = std::fs::File::from(s.master);
    copy_thread(
        shell_master.try_clone().unwrap(),
        g.master.try_clone().unwrap(),
    );
    copy_thread(g.master.try_clone().unwrap(), shell_master);
    g.shell = Some(shell);
    g
}

/// `text` as the console draws it in the default colours: `len * 8` by 16 pixels.
pub fn glyph_strip(text: &str) -> Framebuffer {
    let n = text.chars().count() as u16;
    let mut c = Console::new(&ConsoleConfig {
        cols: n + 1,
        rows: 1,
        ..ConsoleConfig::default()
    })
    .unwrap();
    c.feed(text.as_bytes());
    let mut fb = Framebuffer::new(1, 1).unwrap();
    c.render(&mut fb).unwrap();
    fb
}

/// How many times `text` appears in `pixels` (`width` wide) at cell positions.
pub fn count_text(pixels: &[u32], width: usize, text: &str) -> usize {
    let strip = glyph_strip(text);
    let sw = usize::from(strip.width());
    let tw = text.chars().count() * 8;
    let h = pixels.len() / width.max(1);
    let mut found = 0;
    for row in (0..h.saturating_sub(15)).step_by(16) {
        for col in (0..width.saturating_sub(tw - 1)).step_by(8) {
            let same = (0..16).all(|y| {
                let a = &pixels[(row + y) * width + col..][..tw];
                let b = &strip.pixels()[y * sw..][..tw];
                a == b
            });
            if same {
                found += 1;
            }
        }
    }
    found
}
