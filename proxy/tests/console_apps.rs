//! Real terminal programs (top, less, vim) run in a pty with the console as their
//! terminal, and a vttest-style sequence checked cell by cell.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::pty::{openpty, Winsize};
use xenvt_proxy::console::font::Font;
use xenvt_proxy::console::keys::sym;
use xenvt_proxy::console::render::BASE16;
use xenvt_proxy::console::source::{pump, ConsoleSource, PumpLimits};
use xenvt_proxy::console::{Console, ConsoleConfig, Error};
use xenvt_proxy::rfb::Framebuffer;

/// A safety net for a broken program, not a synchronisation: every wait below ends on
/// a screen condition.
const LIMIT: Duration = Duration::from_secs(60);

/// Whether `prog` is installed. A missing program skips its test, unless
/// `XENVT_REQUIRE_PEERS` is set (the test scripts install every program first).
fn have(prog: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var_os("XENVT_REQUIRE_PEERS").is_some() {
        panic!("{prog} is not installed, and XENVT_REQUIRE_PEERS is set");
    }
    found
}

/// Starts `argv` on a new pty of the console's size as its controlling terminal.
fn spawn(argv: &[&str], cols: u16, rows: u16) -> (Child, OwnedFd) {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let p = openpty(Some(&ws), None).expect("openpty");
    let slave = p.slave;
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env("TERM", "xterm")
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
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
    let child = cmd.spawn().expect("spawn");
    (child, p.master)
}

/// A program on a console-sized pty, and the console that is its terminal.
struct App {
    src: ConsoleSource,
    c: Console,
}

impl App {
    /// Pumps output into the console, answering its queries, until `done` holds;
    /// false if the program closed the pty first.
    async fn until(&mut self, mut done: impl FnMut(&Console) -> bool) -> bool {
        let (src, c) = (&mut self.src, &mut self.c);
        tokio::time::timeout(LIMIT, async {
            while !done(c) {
                match pump(src, c, None, PumpLimits::default()).await {
                    Ok(_) => {}
                    Err(Error::ConsoleClosed) => return done(c),
                    Err(e) => panic!("{e}"),
                }
                let replies = c.take_replies();
                if !replies.is_empty() {
                    src.write_all(&replies).await.unwrap();
                }
            }
            true
        })
        .await
        .unwrap_or_else(|_| panic!("screen never matched; it shows:\n{}", c.screen().contents()))
    }

    /// Waits until the screen shows `text`.
    async fn shows(&mut self, text: &str) {
        assert!(
            self.until(|c| c.screen().contents().contains(text)).await,
            "closed before showing {text:?}"
        );
    }

    async fn type_keys(&mut self, keys: &[u32]) {
        let mut bytes = Vec::new();
        for &k in keys {
            bytes.extend(self.c.key(k, true));
            bytes.extend(self.c.key(k, false));
        }
        self.src.write_all(&bytes).await.unwrap();
    }

    /// Types `keys` and waits until the program closes the pty.
    async fn quit(mut self, keys: &[u32]) {
        self.type_keys(keys).await;
        self.until(|_| false).await;
    }
}

/// Runs `argv` with the default console as its terminal, lets `script` drive
/// it, and checks that it exits successfully. Skipped (false) when the
/// program is not installed.
fn run_app<F: std::future::Future<Output = ()>>(
    argv: &[&str],
    script: impl FnOnce(App) -> F,
) -> bool {
    if !have(argv[0]) {
        eprintln!("skipped: {} is not installed", argv[0]);
        return false;
    }
    let cfg = ConsoleConfig::default();
    let (mut child, master) = spawn(argv, cfg.cols, cfg.rows);
    rt().block_on(async {
        let src = ConsoleSource::from_fd(master).unwrap();
        let c = Console::new(&cfg).unwrap();
        script(App { src, c }).await;
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    true
}

fn chars(s: &str) -> Vec<u32> {
    s.chars()
        .map(|ch| match ch {
            '\n' => sym::RETURN,
            ch => u32::from(ch),
        })
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn render_all(c: &mut Console) -> Framebuffer {
    let (w, h) = c.size_px();
    let mut fb = Framebuffer::new(w, h).unwrap();
    c.render(&mut fb).unwrap();
    fb
}

#[test]
fn top_renders() {
    run_app(&["top", "-d", "5"], |mut a| async move {
        let mut fb = render_all(&mut a.c);
        let shown = a
            .until(|c| {
                let s = c.screen().contents();
                s.contains("top - ") && s.contains("Tasks:") && s.contains("PID")
            })
            .await;
        assert!(shown);
        let damage = a.c.render(&mut fb).unwrap();
        assert!(!damage.is_empty());
        let cols = ConsoleConfig::default().cols;
        let first = a.c.screen().rows(0, cols).next().unwrap();
        assert!(first.starts_with("top - "), "{first:?}");
        a.quit(&[u32::from(b'q')]).await;
    });
}

#[test]
fn less_pages_with_console_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("numbers.txt");
    let text: String = (1..=100).map(|i| format!("line {i:03}\n")).collect();
    std::fs::write(&file, text).unwrap();
    run_app(&["less", file.to_str().unwrap()], |mut a| async move {
        a.shows("line 024").await;
        let s = a.c.screen();
        assert!(s.alternate_screen() || s.contents().starts_with("line 001"));
        a.type_keys(&[u32::from(b'G')]).await;
        a.shows("line 100").await;
        // Up-arrow goes through the cursor-key path (application mode or not).
        a.type_keys(&[sym::UP, sym::UP]).await;
        assert!(
            a.until(|c| !c.screen().contents().contains("line 100"))
                .await
        );
        a.quit(&[u32::from(b'q')]).await;
    });
}

#[test]
fn vim_edits_a_file_through_console_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("edit.txt");
    let path = file.to_str().unwrap();
    let ran = run_app(
        &["vim", "-u", "NONE", "-i", "NONE", "-N", "-n", path],
        |mut a| async move {
            // The empty buffer shows `~` lines and the file name.
            a.shows("edit.txt").await;
            let mut keys = chars("ihello wurld");
            keys.extend([sym::LEFT, sym::LEFT, sym::LEFT, sym::LEFT, sym::DELETE]);
            keys.extend(chars("o"));
            keys.push(sym::ESCAPE);
            keys.extend(chars("A!?"));
            keys.extend([sym::BACKSPACE, sym::ESCAPE]);
            a.type_keys(&keys).await;
            a.shows("hello world!\n").await;
            // Control-L (redraw) through the modifier path.
            let mut ctrl_l = a.c.key(sym::CONTROL_L, true);
            ctrl_l.extend(a.c.key(u32::from(b'l'), true));
            ctrl_l.extend(a.c.key(u32::from(b'l'), false));
            ctrl_l.extend(a.c.key(sym::CONTROL_L, false));
            assert_eq!(ctrl_l, b"\x0c");
            a.src.write_all(&ctrl_l).await.unwrap();
            a.quit(&chars(":wq\n")).await;
        },
    );
    if ran {
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello world!\n");
    }
}

/// Cursor addressing, erasing, insert/delete, wrap, tabs, scroll regions, reverse index
/// and DEC line drawing, in the spirit of vttest's screens.
#[test]
fn vttest_style_sequence() {
    let mut c = Console::new(&ConsoleConfig {
        cols: 20,
        rows: 8,
        ..ConsoleConfig::default()
    })
    .unwrap();
    let seq: &[&[u8]] = &[
        b"\x1b[2J\x1b[H",
        // A box in line drawing, placed by absolute addressing.
        b"\x1b[1;1H\x1b(0lqqqqk\x1b[2;1Hx\x1b[2;6Hx\x1b[3;1Hmqqqqj\x1b(B",
        // Text inside, then relative moves back into it.
        b"\x1b[2;2Habcd\x1b[2D\x1b[1@",
        // Line 4: fill, erase to end of line from column 5, then delete two characters.
        b"\x1b[4;1H0123456789\x1b[4;5H\x1b[K\x1b[4;1H\x1b[2P",
        // Line 5: tabs.
        b"\x1b[5;1Ha\tb\tc",
        // Line 6: wrap at the right margin into line 7.
        b"\x1b[6;1H12345678901234567890WRAP",
        // Scroll region 6..7 and a reverse index at its top pushes lines down in it.
        b"\x1b[6;7r\x1b[6;1H\x1bMnew\x1b[r",
        // Insert a line at line 8 (the bottom), then write there.
        b"\x1b[8;1H\x1b[Llast",
        // Cursor up/down/forward/back.
        b"\x1b[8;10H\x1b[2A\x1b[1B\x1b[3C\x1b[2D*",
    ];
    for s in seq {
        c.feed(s);
    }
    let want = [
        "┌────┐",
        "│ab cd│",
        "└────┘",
        "23",
        "a       b       c",
        "new",
        "12345678901234567890",
        "last",
    ];
    let rows: Vec<String> = c.screen().rows(0, 20).collect();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    // The `*` lands on line 7, column 11, over the wrapped digits.
    want[6] = "1234567890*234567890".to_string();
    for (i, (got, want)) in rows.iter().zip(&want).enumerate() {
        assert_eq!(got.trim_end(), want, "row {}", i + 1);
    }
    // The box corner is drawn with the font's glyph.
    c.feed(b"\x1b[?25l");
    let fb = render_all(&mut c);
    let font = Font::builtin();
    let g = font.glyph(font.index('┌'));
    for (dy, bits) in g.iter().enumerate() {
        for dx in 0..8u16 {
            let on = bits & (0x80 >> dx) != 0;
            let p = fb.get(dx, dy as u16).unwrap();
            assert_eq!(p, if on { BASE16[7] } else { BASE16[0] }, "({dx},{dy})");
        }
    }
}

#[test]
fn kernel_panic_log_renders() {
    // A panic as a guest kernel prints it on its serial console: LF-only lines (the pty's
    // output processing would add CR), long lines that wrap, and a final line that stays.
    let mut c = Console::new(&ConsoleConfig::default()).unwrap();
    let mut log = String::new();
    for i in 0..60 {
        log.push_str(&format!(
            "[    {}.{:06}] Call Trace: func_{i}+0x{i:x}/0x200 [module_{i}] some long context to make this line wrap past eighty columns\r\n",
            i / 10,
            i * 1234
        ));
    }
    log.push_str(
        "---[ end Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009 ]---",
    );
    c.feed(log.as_bytes());
    let rows: Vec<String> = c.screen().rows(0, 80).collect();
    assert!(
        rows[23].starts_with("---[ end Kernel panic"),
        "{:?}",
        rows[23]
    );
    assert!(rows[24].starts_with("d=0x00000009 ]---") || rows[23].contains("exitcode"));
    let fb = render_all(&mut c);
    assert_eq!((fb.width(), fb.height()), (640, 400));
}
