//! The console source against real ptys: a console that spews random bytes at full speed
//! stays bounded and keeps rendering, and does not starve another console.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::pty::openpty;
use xenvt_proxy::console::source::{pump, ConsoleSource, Pacer, PumpLimits};
use xenvt_proxy::console::{Console, ConsoleConfig, Error};
use xenvt_proxy::rfb::Framebuffer;

/// A pty pair: the "guest" end (the master, which xenconsoled holds on Xen) and the path of
/// the slave the proxy opens.
/// A pty in raw mode from the start, as xenconsoled makes it. In the default cooked mode
/// the line discipline edits what the writer sends before the reader has opened it (a
/// random ^C flushes the queue, a long line is cut), so bytes go missing.
fn pty() -> (std::fs::File, PathBuf, OwnedFd) {
    let p = openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&p.slave).expect("ttyname");
    let mut t = nix::sys::termios::tcgetattr(&p.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&p.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    (std::fs::File::from(p.master), path, p.slave)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

struct XorShift(u64);
impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

const MARKER: &str = "END-MARKER-7f3a";

#[test]
fn spewing_pty_stays_bounded_and_keeps_rendering() {
    let (mut master, path, slave) = pty();
    let total: usize = 6 << 20;
    let (seen_tx, seen_rx) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            rng.fill(&mut buf);
            master.write_all(&buf).unwrap();
            sent += buf.len();
        }
        // Cancel any open sequence, reset, and write a marker the reader waits for.
        master
            .write_all(format!("\x18\x1b\\\x1bc\x1b[2J\x1b[H{MARKER}").as_bytes())
            .unwrap();
        // Keep the master open until the reader saw everything: closing hangs up the pty.
        let _ = seen_rx.recv();
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = ConsoleConfig {
        scrollback: 500,
        ..ConsoleConfig::default()
    };
    let (renders, rss_growth, bytes) = rt.block_on(async {
        let mut src = ConsoleSource::open_pty(&path).unwrap();
        drop(slave);
        let mut console = Console::new(&cfg).unwrap();
        let (w, h) = console.size_px();
        let mut fb = Framebuffer::new(w, h).unwrap();
        let mut pacer = Pacer::new(30);
        let mut renders = 0u32;
        let mut bytes = 0usize;
        let mut rss_mid = 0;
        loop {
            bytes += pump(&mut src, &mut console, None, PumpLimits::default())
                .await
                .unwrap();
            pacer.mark_dirty();
            // Replies the random bytes asked for are bounded; a real proxy would send them.
            assert!(console.take_replies().len() <= xenvt_proxy::console::MAX_REPLIES);
            let now = Instant::now();
            if pacer.ready(now) {
                console.render(&mut fb).unwrap();
                pacer.rendered(now);
                renders += 1;
            }
            if rss_mid == 0 && bytes >= total / 4 {
                rss_mid = rss_bytes();
            }
            if console.screen().contents().contains(MARKER) {
                break;
            }
            assert!(bytes <= total + 4096, "marker never arrived");
        }
        assert!(console.screen().scrollback_len() <= 500);
        console.render(&mut fb).unwrap();
        (renders, rss_bytes().saturating_sub(rss_mid), bytes)
    });
    seen_tx.send(()).unwrap();
    writer.join().unwrap();
    assert!(bytes >= total);
    // Rendering went on while the output streamed (the stream takes well over one
    // render interval at any plausible speed, and a render is due on the first pump).
    assert!(renders >= 1, "renders {renders}");
    // Three quarters of the stream passed after the midpoint sample; a console that kept
    // any share of it would grow by megabytes.
    assert!(rss_growth < 2 << 20, "grew {rss_growth} bytes");
}

#[test]
fn spewing_console_does_not_starve_another() {
    let (mut loud, loud_path, loud_slave) = pty();
    let (mut quiet, quiet_path, quiet_slave) = pty();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_w = stop.clone();
    let writer = std::thread::spawn(move || {
        use std::os::fd::AsFd;
        // Non-blocking, so the writer can notice `stop` when nobody reads any more.
        let fd = loud.as_fd();
        let fl = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::F_GETFL).unwrap();
        let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::F_SETFL(fl)).unwrap();
        let buf = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        while !stop_w.load(Ordering::Relaxed) {
            match loud.write(&buf) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut fds = [nix::poll::PollFd::new(
                        loud.as_fd(),
                        nix::poll::PollFlags::POLLOUT,
                    )];
                    let _ = nix::poll::poll(&mut fds, 100u16);
                }
                Err(e) => panic!("{e}"),
            }
        }
        sent
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut loud_src = ConsoleSource::open_pty(&loud_path).unwrap();
        let mut quiet_src = ConsoleSource::open_pty(&quiet_path).unwrap();
        drop((loud_slave, quiet_slave));
        let (flowing_tx, flowing_rx) = tokio::sync::oneshot::channel::<()>();
        let loud_task = tokio::spawn(async move {
            let mut c = Console::new(&ConsoleConfig::default()).unwrap();
            let mut n = 0usize;
            let mut flowing = Some(flowing_tx);
            loop {
                match pump(&mut loud_src, &mut c, None, PumpLimits::default()).await {
                    Ok(k) => {
                        n += k;
                        if n >= 1 << 20 {
                            if let Some(tx) = flowing.take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Err(Error::ConsoleClosed) => return n,
                    Err(e) => panic!("{e}"),
                }
            }
        });
        // The quiet one speaks only once the loud one is flowing; on this single-threaded
        // runtime its reads then run only if the loud pump yields.
        flowing_rx.await.unwrap();
        quiet.write_all(b"hello from the quiet one").unwrap();
        let mut c = Console::new(&ConsoleConfig::default()).unwrap();
        let limit = Duration::from_secs(30);
        tokio::time::timeout(limit, async {
            while !c.screen().contents().contains("quiet one") {
                pump(&mut quiet_src, &mut c, None, PumpLimits::default())
                    .await
                    .unwrap();
            }
        })
        .await
        .expect("quiet console starved");
        assert!(!loud_task.is_finished(), "the loud console stopped early");
        loud_task.abort();
    });
    stop.store(true, Ordering::Relaxed);
    drop(rt);
    let sent = writer.join().unwrap();
    assert!(sent > 0);
}

#[test]
fn unix_socket_source_and_input() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let peer = std::thread::spawn(move || {
        use std::io::Read;
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"login: \x1b[6n").unwrap();
        let mut got = [0u8; 64];
        let mut have = 0;
        while !got[..have].ends_with(b"root\r") {
            let n = s.read(&mut got[have..]).unwrap();
            assert!(n > 0);
            have += n;
        }
        got[..have].to_vec()
    });
    rt.block_on(async {
        let mut src = ConsoleSource::connect_unix(&sock).await.unwrap();
        let mut c = Console::new(&ConsoleConfig::default()).unwrap();
        while !c.screen().contents().contains("login:") {
            pump(&mut src, &mut c, None, PumpLimits::default())
                .await
                .unwrap();
        }
        let mut input = c.take_replies();
        for ch in "root".chars() {
            input.extend(c.key(u32::from(ch), true));
        }
        input.extend(c.key(0xff0d, true));
        src.write_all(&input).await.unwrap();
        let got = peer.join().unwrap();
        assert_eq!(got, b"\x1b[1;8Rroot\r");
        // The peer hung up.
        let mut buf = [0u8; 16];
        assert!(matches!(
            src.read(&mut buf).await,
            Err(Error::ConsoleClosed)
        ));
    });
}

#[test]
fn pty_hangup_is_closed() {
    let (master, path, slave) = pty();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut src = ConsoleSource::open_pty(&path).unwrap();
        drop(slave);
        drop(master);
        let mut c = Console::new(&ConsoleConfig::default()).unwrap();
        let r = pump(&mut src, &mut c, None, PumpLimits::default()).await;
        assert!(matches!(r, Err(Error::ConsoleClosed)), "{r:?}");
    });
}

#[test]
fn pump_writes_the_log() {
    let (mut master, path, slave) = pty();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut src = ConsoleSource::open_pty(&path).unwrap();
        drop(slave);
        let mut log =
            xenvt_proxy::console::log::ConsoleLog::open(dir.path().join("console.log"), 16, 1)
                .unwrap();
        let mut c = Console::new(&ConsoleConfig::default()).unwrap();
        master.write_all(b"0123456789abcdefGHIJ").unwrap();
        let mut n = 0;
        while n < 20 {
            n += pump(&mut src, &mut c, Some(&mut log), PumpLimits::default())
                .await
                .unwrap();
        }
        assert_eq!(std::fs::read(log.rotated(1)).unwrap(), b"0123456789abcdef");
        assert_eq!(std::fs::read(log.path()).unwrap(), b"GHIJ");
    });
}

/// `pump` feeds the console and then yields when its budget runs out. A caller that
/// drops it at that yield (a `select!` whose other branch is ready) never sees its
/// result, so the console itself must remember that output came in: the console view
/// once lost the last lines of a burst this way until the guest wrote again.
#[test]
fn output_fed_before_a_cancelled_yield_is_still_seen() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let mut src = ConsoleSource::connect_unix(&path).await.unwrap();
        let (guest, _) = l.accept().await.unwrap();
        // A socket, unlike a pty, has all of it readable as soon as the write returns.
        let text = "0123456789abcdef".repeat(4) + "the last line";
        let mut guest = guest.into_std().unwrap();
        guest.set_nonblocking(false).unwrap();
        guest.write_all(text.as_bytes()).unwrap();
        let mut c = Console::new(&ConsoleConfig::default()).unwrap();
        let tiny = PumpLimits {
            chunk: 16,
            budget: 32,
        };
        // Readiness known first, so pump's own wait does not end the race early.
        if let ConsoleSource::Unix(s) = &src {
            s.readable().await.unwrap();
        }
        let finished = tokio::select! {
            biased;
            _ = pump(&mut src, &mut c, None, tiny) => true,
            _ = std::future::ready(()) => false,
        };
        assert!(!finished, "pump ran out of budget and yielded");
        assert!(c.unrendered(), "fed output is remembered across the cancel");
        let mut fb = Framebuffer::new(8, 8).unwrap();
        c.render(&mut fb).unwrap();
        assert!(!c.unrendered());
        while !c.screen().contents().contains("the last line") {
            pump(&mut src, &mut c, None, tiny).await.unwrap();
        }
        assert!(c.unrendered());
    });
}
