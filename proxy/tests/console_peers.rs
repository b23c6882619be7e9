//! The console view and view switching as real viewers see them: vncdotool (its own
//! screenshots) and TigerVNC's vncviewer under Xvfb (an X screenshot of its window),
//! with a shell on a pty as the guest console and a real Xvnc as the desktop.
//!
//! Every wait is for a picture: a peer's screenshot is taken again until it shows what
//! is expected, bounded by [`PATIENCE`].

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::guest::*;
use common::image::*;
use common::*;

const ORANGE: u32 = 0xff8000;
const DESKTOP: (usize, usize) = (320, 240);

fn config(console: &GuestConsole, switch: &str) -> String {
    format!(
        "[[domain]]\ndomid = 1\nname = \"vm1\"\nport = 0\nconsole = \"pty:{}\"\n\
         [reverse]\ndomid = 1\nlisten = \"127.0.0.1:0\"\n[xenstore]\nenabled = false\n\
         [switch]\nmanual_hold_ms = 0\n{switch}",
        console.path.display()
    )
}

/// The proxy, a shell console and an orange Xvnc desktop that has been delivered.
struct Setup {
    dir: tempfile::TempDir,
    _guest: GuestConsole,
    proxy: Proxy,
    xvnc: Option<Xvnc>,
}

/// An orange 320x240 Xvnc, reverse-connected to the proxy.
fn desktop(dir: &tempfile::TempDir, proxy: &Proxy) -> Xvnc {
    let xvnc = Xvnc::start(dir.path(), "320x240");
    xvnc.solid("#ff8000");
    xvnc.connect_to(proxy.reverse.as_deref().unwrap());
    xvnc
}

fn setup(switch: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let guest = shell_console();
    let proxy = Proxy::start(dir.path(), &config(&guest, switch));
    let xvnc = Some(desktop(&dir, &proxy));
    Setup {
        dir,
        _guest: guest,
        proxy,
        xvnc,
    }
}

/// The desktop: exactly a 320x240 orange picture.
fn desktop_at(img: &Image) -> Option<(usize, usize)> {
    match img.colour_box(ORANGE) {
        (n, Some((x, y, w, h))) if (w, h) == DESKTOP && n == w * h => Some((x, y)),
        _ => None,
    }
}

fn vncdo() -> Option<PathBuf> {
    let p = std::env::var_os("XENVT_VNCDO")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .unwrap()
                .join("vncdo-venv/bin/vncdo")
        });
    if p.is_file() {
        Some(p)
    } else {
        missing(&format!(
            "vncdotool not found at {} (set XENVT_VNCDO)",
            p.display()
        ));
        None
    }
}

fn run_vncdo(vncdo: &Path, server: &str, args: &[&str]) {
    let mut child = Command::new(vncdo)
        .args(["--nocursor", "-t", "25", "-s", server])
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("run vncdo");
    let st = wait_bounded(&mut child, "vncdo");
    assert!(st.success(), "vncdo {args:?} failed");
}

/// Waits for a child, killing it (and failing) after [`PATIENCE`].
fn wait_bounded(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish in time");
        }
        // Polling a child's exit: no event to wait on without blocking forever.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// vncdotool's screenshot (a fresh connection each time) until `pred` holds.
fn vncdo_until(
    vncdo: &Path,
    server: &str,
    file: &Path,
    what: &str,
    pred: impl Fn(&Image) -> bool,
) -> Image {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        run_vncdo(vncdo, server, &["capture", file.to_str().unwrap()]);
        let img = parse_bmp(&std::fs::read(file).unwrap()).expect("vncdotool's BMP");
        if pred(&img) {
            return img;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "vncdotool never saw {what}; last capture {}x{}",
            img.width,
            img.height
        );
    }
}

#[test]
fn vncdotool_types_on_the_console_and_switches_views() {
    if !have(&["Xvnc", "xsetroot", "vncconfig", "sh"]) {
        return;
    }
    let Some(vncdo) = vncdo() else { return };
    let s = setup("");
    let addr = s.proxy.viewer_addr(1);
    let server = addr.replace(':', "::");
    let shot = s.dir.path().join("shot.bmp");

    // The delivered desktop shows first.
    vncdo_until(&vncdo, &server, &shot, "the desktop", |i| {
        (i.width, i.height) == DESKTOP && desktop_at(i).is_some()
    });

    // Ctrl-Alt-F1: the console, where typed text reaches the shell.
    run_vncdo(&vncdo, &server, &["key", "ctrl-alt-f1"]);
    vncdo_until(&vncdo, &server, &shot, "the console", |i| {
        (i.width, i.height) == (640, 400) && !i.find_text("$ ").is_empty()
    });
    run_vncdo(&vncdo, &server, &["type", "echo hello", "key", "enter"]);
    let console = vncdo_until(&vncdo, &server, &shot, "hello twice", |i| {
        (i.width, i.height) == (640, 400) && i.find_text("hello").len() >= 2
    });
    // The command line, then its output on the line below at the left margin.
    let hits = console.find_text("hello");
    assert!(hits.iter().any(|&(x, _)| x == 0), "{hits:?}");
    assert_eq!(console.find_text("echo hello").len(), 1);

    // Ctrl-Alt-F7 to the desktop and Ctrl-Alt-F1 back; the size follows each time.
    run_vncdo(&vncdo, &server, &["key", "ctrl-alt-f7"]);
    vncdo_until(&vncdo, &server, &shot, "the desktop again", |i| {
        (i.width, i.height) == DESKTOP && desktop_at(i).is_some()
    });
    run_vncdo(&vncdo, &server, &["key", "ctrl-alt-f1"]);
    vncdo_until(&vncdo, &server, &shot, "the console again", |i| {
        (i.width, i.height) == (640, 400) && i.find_text("hello").len() >= 2
    });

    if let Some(out) = std::env::var_os("XENVT_SCREENSHOTS") {
        let out = PathBuf::from(out);
        let png = out.join("console-vncdotool.png");
        run_vncdo(&vncdo, &server, &["capture", png.to_str().unwrap()]);
        run_vncdo(&vncdo, &server, &["key", "ctrl-alt-f7"]);
        vncdo_until(&vncdo, &server, &shot, "the desktop for the picture", |i| {
            desktop_at(i).is_some()
        });
        let png = out.join("desktop-vncdotool.png");
        run_vncdo(&vncdo, &server, &["capture", png.to_str().unwrap()]);
    }
}

/// A virtual X screen; killed on drop.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Xvfb {
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1024x768x24", "-br"])
            .args(["-nolisten", "tcp"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn Xvfb");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let n: u32 = line.trim().parse().expect("display number from Xvfb");
        Xvfb {
            child,
            display: format!(":{n}"),
        }
    }

    fn screenshot(&self) -> Image {
        let out = Command::new("xwd")
            .args(["-root", "-silent", "-display", &self.display])
            .output()
            .expect("xwd");
        assert!(out.status.success(), "xwd failed");
        parse_xwd(&out.stdout).expect("xwd dump")
    }

    fn until(&self, what: &str, pred: impl Fn(&Image) -> bool) -> Image {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let img = self.screenshot();
            if pred(&img) {
                return img;
            }
            if std::time::Instant::now() > deadline {
                let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("last-xvfb.ppm");
                let mut ppm = format!("P6 {} {} 255\n", img.width, img.height).into_bytes();
                for p in &img.pixels {
                    ppm.extend_from_slice(&p.to_be_bytes()[1..]);
                }
                let _ = std::fs::write(&file, ppm);
                panic!(
                    "the X screen never showed {what}; it is in {}",
                    file.display()
                );
            }
            // The X screen has no event for "the viewer drew it"; look again shortly.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn xdotool(&self, args: &[&str]) -> String {
        match self.try_xdotool(args) {
            Ok(out) => out,
            Err(err) => panic!("xdotool {args:?} failed: {err}"),
        }
    }

    /// One xdotool run: its stdout, or its stderr when it fails.
    fn try_xdotool(&self, args: &[&str]) -> Result<String, String> {
        let mut child = Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("xdotool");
        // Its output is a few lines: it fits the pipes until the child has exited.
        let st = wait_bounded(&mut child, "xdotool");
        let mut out = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        if st.success() {
            Ok(out)
        } else {
            Err(format!("{st}: {}", err.trim()))
        }
    }

    /// The newest visible window whose name matches `pattern`, waiting for it.
    ///
    /// `xdotool search` walks the window tree and exits non-zero when a window it is
    /// looking at vanishes mid-walk (BadWindow): the viewer creates and destroys
    /// windows while it connects. That failure says nothing about the window we want,
    /// so the search runs again, within [`PATIENCE`].
    fn window(&self, pattern: &str) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let args = ["search", "--sync", "--onlyvisible", "--name", pattern];
            let err = match self.try_xdotool(&args) {
                Ok(out) => match out.lines().last() {
                    Some(w) => return w.to_owned(),
                    None => "no window".to_owned(),
                },
                Err(err) => err,
            };
            assert!(
                std::time::Instant::now() < deadline,
                "xdotool {args:?} failed: {err}"
            );
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The viewer window's size as xdotool reports it.
fn window_size(x: &Xvfb, win: &str) -> String {
    let g = x.xdotool(&["getwindowgeometry", win]);
    g.lines()
        .find_map(|l| l.trim().strip_prefix("Geometry: ").map(str::to_owned))
        .unwrap_or_default()
}

/// The views switch as the desktop goes and comes back, and by key. TigerVNC's viewer
/// cannot be made to send Ctrl-Alt-F<n> under Xvfb, whose keymap gives those keys a
/// server action (a VT switch) that swallows the press before any client sees it; so
/// this domain binds Ctrl-Alt-1 and Ctrl-Alt-7 instead.
#[test]
fn tigervnc_viewer_switches_with_zrle_and_tight() {
    if !have(&[
        "Xvnc",
        "xsetroot",
        "vncconfig",
        "sh",
        "Xvfb",
        "xwd",
        "xdotool",
        "vncviewer",
    ]) {
        return;
    }
    // Ctrl-Alt-F<n> cannot come through here (see above); Ctrl-Alt-<digit> can.
    let mut s = setup("console = \"ctrl-alt-1\"\ndesktop = \"ctrl-alt-7\"\n");
    let server = s.proxy.viewer_addr(1).replace(':', "::");
    let x = Xvfb::start();
    for enc in ["ZRLE", "Tight"] {
        let mut viewer = Command::new("vncviewer")
            .arg(format!("-PreferredEncoding={enc}"))
            .args(["-AutoSelect=0", "-SecurityTypes=None", "-Shared=1"])
            .arg(&server)
            .env("DISPLAY", &x.display)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vncviewer");
        let win = x.window(" - TigerVNC$");
        // No window manager: the pointer inside the window gives it the keyboard.
        x.xdotool(&["mousemove", "--window", &win, "10", "10"]);

        x.until(&format!("the desktop ({enc})"), |i| desktop_at(i).is_some());
        assert_eq!(window_size(&x, &win), "320x240");

        // The desktop goes (a guest reboot): the console, where typing reaches the shell
        // and the screen shows our rendering.
        s.xvnc = None;
        let word = format!("via{}", enc.to_lowercase());
        x.until(&format!("the console ({enc})"), |i| {
            desktop_at(i).is_none() && !i.find_text("$ ").is_empty()
        });
        assert_eq!(window_size(&x, &win), "640x400");
        x.xdotool(&["windowfocus", &win]);
        x.xdotool(&["type", &format!("echo {word}")]);
        x.xdotool(&["key", "Return"]);
        x.until(&format!("the typed line and its echo ({enc})"), |i| {
            i.find_text(&word).len() >= 2
        });

        // It comes back: the desktop again, at its own size.
        s.xvnc = Some(desktop(&s.dir, &s.proxy));
        x.until(&format!("the desktop again ({enc})"), |i| {
            desktop_at(i).is_some() && i.find_text(&word).is_empty()
        });
        assert_eq!(window_size(&x, &win), "320x240");

        // By key, back and forth; the window follows the view's size.
        let key = |k: &str| {
            x.xdotool(&["windowfocus", &win]);
            x.xdotool(&["key", "--clearmodifiers", k]);
        };
        key("ctrl+alt+1");
        x.until(&format!("the console by key ({enc})"), |i| {
            desktop_at(i).is_none() && i.find_text(&word).len() >= 2
        });
        assert_eq!(window_size(&x, &win), "640x400");
        key("ctrl+alt+7");
        x.until(&format!("the desktop by key ({enc})"), |i| {
            desktop_at(i).is_some()
        });
        assert_eq!(window_size(&x, &win), "320x240");
        key("ctrl+alt+1");
        x.until(&format!("the console by key again ({enc})"), |i| {
            i.find_text(&word).len() >= 2
        });
        assert_eq!(window_size(&x, &win), "640x400");
        // Leave the desktop showing for the next viewer.
        key("ctrl+alt+7");
        x.until(&format!("the desktop for the next viewer ({enc})"), |i| {
            desktop_at(i).is_some()
        });

        let _ = viewer.kill();
        let _ = viewer.wait();
    }
}
