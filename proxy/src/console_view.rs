//! The console view's producer: finds the domain's console, feeds the terminal emulator,
//! draws changed cells into the view and sends viewers' keys and pastes to the guest.
//!
//! Where the console is: a fixed pty or unix socket from the config, or (on Xen) the pty
//! that xenconsoled names in `/local/domain/<id>/console/tty`, watched so that a reboot's
//! new pty is picked up. The task outlives any one console: when the console closes it
//! says so on screen and waits for it to come back. Reading is budgeted ([`pump`]) and
//! rendering paced ([`Pacer`]), so a console that spews cannot starve other domains, and
//! typed input goes through a bounded queue to a writer task, so a guest that does not
//! read cannot stall the view.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn, Instrument};
use xenvt_ring::xenstore::Xenstore;

use crate::console::log::ConsoleLog;
use crate::console::source::{pump, ConsoleSource, Pacer, PumpLimits};
use crate::console::{Console, ConsoleConfig};
use crate::domain::{ConsolePort, ViewHandle};
use crate::error::{Error, Result};
use crate::region::Region;
use crate::view::ConsoleEvent;

/// Typed input queued for a guest that is not reading, in writes; more is dropped.
pub const OUTPUT_QUEUE: usize = 256;
/// Longest wait between attempts to open a console that is not there.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// Where a domain's console comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleSpec {
    /// No console: the view shows a note.
    None,
    /// A pty (or other tty) by path.
    Pty(PathBuf),
    /// A unix stream socket.
    Unix(PathBuf),
    /// The pty named in `/local/domain/<id>/console/tty`, followed as it changes.
    Xenstore,
}

/// The console log's place and bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    /// The live file.
    pub path: PathBuf,
    /// Largest size of one file.
    pub max_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
}

/// How one domain's console view runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleSettings {
    /// Grid, scrollback, key flavour.
    pub config: ConsoleConfig,
    /// Where the console is.
    pub source: ConsoleSpec,
    /// The console log, if kept.
    pub log: Option<LogSettings>,
    /// Most renders a second while output streams.
    pub fps: u32,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        ConsoleSettings {
            config: ConsoleConfig::default(),
            source: ConsoleSpec::None,
            log: None,
            fps: 30,
        }
    }
}

/// True for what xenconsoled writes: `/dev/pts/<n>`. The console directory is writable by
/// the guest on some toolstacks, so anything else (a disk, a FIFO, a file) is refused
/// rather than opened.
pub fn acceptable_tty(path: &str) -> bool {
    path.strip_prefix("/dev/pts/")
        .is_some_and(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Follows the console's location.
enum Locator {
    Fixed(ConsoleSpec),
    Xenstore {
        rx: watch::Receiver<Option<String>>,
        _tasks: AbortOnDrop,
        /// Refused values seen (the guest may write many): only the first is logged.
        refused: u64,
    },
}

/// Aborts its tasks when dropped (the console task ended).
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Watches `path` and keeps `tx` holding its value. The watch stream is drained by its
/// own task and the reads happen in another: the client would otherwise stall requests
/// behind watch events nobody collected.
fn follow_node<X: Xenstore + Clone>(
    xs: X,
    path: String,
) -> Result<(watch::Receiver<Option<String>>, AbortOnDrop)> {
    let (tx, rx) = watch::channel(None);
    let fired = Arc::new(Notify::new());
    let f2 = fired.clone();
    let p2 = path.clone();
    let xs2 = xs.clone();
    let drain = async move {
        let mut w = match xs2.watch(&p2).await {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot watch {p2}: {e}");
                return;
            }
        };
        while w.next().await.is_some() {
            f2.notify_one();
        }
        warn!("the watch on {p2} ended");
    };
    let drain = tokio::spawn(drain.in_current_span());
    let reader = async move {
        loop {
            fired.notified().await;
            match xs.read(&path).await {
                Ok(v) => {
                    tx.send_if_modified(|cur| {
                        let changed = *cur != v;
                        *cur = v;
                        changed
                    });
                }
                Err(e) => warn!("reading {path}: {e}"),
            }
        }
    };
    let reader = tokio::spawn(reader.in_current_span());
    Ok((
        rx,
        AbortOnDrop(vec![drain.abort_handle(), reader.abort_handle()]),
    ))
}

impl Locator {
    /// What to open next; for xenstore, waits until the node names an acceptable pty.
    async fn next(&mut self) -> Option<ConsoleSpec> {
        match self {
            Locator::Fixed(ConsoleSpec::None) => std::future::pending().await,
            Locator::Fixed(s) => Some(s.clone()),
            Locator::Xenstore { rx, refused, .. } => loop {
                let v = rx.borrow_and_update().clone();
                match v {
                    Some(p) if acceptable_tty(&p) => return Some(ConsoleSpec::Pty(p.into())),
                    Some(p) => {
                        *refused += 1;
                        if *refused == 1 {
                            let p: String = p.chars().take(64).collect();
                            warn!(path = %p.escape_debug(), "console/tty is not a /dev/pts path; ignored (said once)");
                        }
                    }
                    None => {}
                }
                rx.changed().await.ok()?;
            },
        }
    }

    /// Resolves when the location changed (never, for a fixed one).
    async fn changed(&mut self) {
        match self {
            Locator::Fixed(_) => std::future::pending().await,
            Locator::Xenstore { rx, .. } => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

async fn open(spec: &ConsoleSpec) -> Result<ConsoleSource> {
    match spec {
        ConsoleSpec::Pty(p) => ConsoleSource::open_pty(p),
        ConsoleSpec::Unix(p) => ConsoleSource::connect_unix(p).await,
        ConsoleSpec::None | ConsoleSpec::Xenstore => Err(Error::ConsoleConfig("nothing to open")),
    }
}

fn describe(spec: &ConsoleSpec) -> String {
    match spec {
        ConsoleSpec::Pty(p) | ConsoleSpec::Unix(p) => p.display().to_string(),
        ConsoleSpec::None => "none".into(),
        ConsoleSpec::Xenstore => "xenstore".into(),
    }
}

/// The console, the view it draws, and what it owes the guest.
struct Screen {
    console: Console,
    view: ViewHandle,
    pacer: Pacer,
}

impl Screen {
    /// Draws changed cells and tells viewers what changed.
    fn render(&mut self) -> Result<()> {
        let (rects, resized) = {
            let mut fb = self.view.fb().write().unwrap_or_else(|p| p.into_inner());
            let before = (fb.width(), fb.height());
            let rects = self.console.render(&mut fb)?;
            (rects, before != (fb.width(), fb.height()))
        };
        if resized {
            self.view.resized();
        } else {
            let mut r = Region::new();
            for x in rects {
                r.add(x);
            }
            self.view.damage(&r);
        }
        self.pacer.rendered(Instant::now());
        Ok(())
    }

    /// A line from us (not the guest), shown in reverse video.
    fn note(&mut self, text: &str) {
        self.console
            .feed(format!("\r\n\x1b[0;7m[xenvt] {text}\x1b[0m\r\n").as_bytes());
        self.pacer.mark_dirty();
    }
}

/// Runs the console view of a domain until the task is aborted (the domain went away).
/// `xs` is needed for [`ConsoleSpec::Xenstore`].
pub async fn run_console<X: Xenstore + Clone>(
    port: ConsolePort,
    set: ConsoleSettings,
    xs: Option<X>,
) -> Result<()> {
    let ConsolePort { view, mut input } = port;
    let domid = view.domain().domid();
    let mut scr = Screen {
        console: Console::new(&set.config)?,
        view,
        pacer: Pacer::new(set.fps),
    };
    let mut log = match &set.log {
        Some(l) => match ConsoleLog::open(&l.path, l.max_bytes, l.keep) {
            Ok(log) => Some(log),
            Err(e) => {
                warn!("console log {}: {e}; running without it", l.path.display());
                None
            }
        },
        None => None,
    };
    let mut loc = match (&set.source, xs) {
        (ConsoleSpec::Xenstore, Some(xs)) => {
            let (rx, tasks) = follow_node(xs, format!("/local/domain/{domid}/console/tty"))?;
            Locator::Xenstore {
                rx,
                _tasks: tasks,
                refused: 0,
            }
        }
        (ConsoleSpec::Xenstore, None) => {
            scr.note("no xenstore: the console cannot be found");
            Locator::Fixed(ConsoleSpec::None)
        }
        (s, _) => Locator::Fixed(s.clone()),
    };
    if set.source == ConsoleSpec::None {
        scr.note("no console is configured for this domain");
    } else {
        scr.note(&format!(
            "waiting for the console of {}",
            scr.view.domain().name()
        ));
    }
    scr.render()?;
    let mut retry = Duration::from_millis(250);
    let mut last_error = String::new();
    loop {
        // Find and open the console, drawing and taking input meanwhile.
        let spec = tokio::select! {
            s = loc.next() => match s { Some(s) => s, None => return Ok(()) },
            r = idle(&mut scr, &mut input) => { r?; continue; }
        };
        let src = match open(&spec).await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("cannot open the console {}: {e}", describe(&spec));
                if msg != last_error {
                    info!("{msg}");
                    scr.note(&msg);
                    last_error = msg;
                }
                let wake = tokio::time::sleep(retry);
                tokio::pin!(wake);
                loop {
                    tokio::select! {
                        _ = &mut wake => break,
                        _ = loc.changed() => break,
                        r = idle(&mut scr, &mut input) => r?,
                    }
                }
                retry = (retry * 2).min(MAX_RETRY);
                continue;
            }
        };
        info!(console = %describe(&spec), "console open");
        last_error.clear();
        scr.note(&format!("console {}", describe(&spec)));
        let started = Instant::now();
        let end = session(&mut scr, src, &mut input, log.as_mut(), &mut loc).await?;
        match end {
            SessionEnd::Closed => scr.note("the console closed; waiting for it to come back"),
            SessionEnd::Moved => scr.note("the console moved"),
        }
        scr.render()?;
        if started.elapsed() > Duration::from_secs(10) {
            retry = Duration::from_millis(250);
        }
        if matches!(end, SessionEnd::Closed) {
            let wake = tokio::time::sleep(retry);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    _ = loc.changed() => break,
                    r = idle(&mut scr, &mut input) => r?,
                }
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
    }
}

/// One pass of the no-console loop: renders when due and lets keys go nowhere (but
/// scrollback keys still scroll).
async fn idle(scr: &mut Screen, input: &mut mpsc::Receiver<ConsoleEvent>) -> Result<()> {
    let due = scr.pacer.due();
    tokio::select! {
        Some(ev) = input.recv(), if !input.is_closed() => {
            if let ConsoleEvent::Key { down, keysym } = ev {
                let _ = scr.console.key(keysym, down);
                scr.pacer.mark_dirty();
            }
        }
        _ = sleep_until(due) => scr.render()?,
    }
    Ok(())
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

enum SessionEnd {
    Closed,
    Moved,
}

async fn session(
    scr: &mut Screen,
    mut src: ConsoleSource,
    input: &mut mpsc::Receiver<ConsoleEvent>,
    mut log: Option<&mut ConsoleLog>,
    loc: &mut Locator,
) -> Result<SessionEnd> {
    let mut wr = src.try_clone()?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(OUTPUT_QUEUE);
    let writer = async move {
        while let Some(b) = rx.recv().await {
            if let Err(e) = wr.write_all(&b).await {
                debug!("console write: {e}");
                break;
            }
        }
    };
    let writer = tokio::spawn(writer.in_current_span());
    let _writer = AbortOnDrop(vec![writer.abort_handle()]);
    let mut dropped = 0u64;
    let mut send = |bytes: Vec<u8>| {
        if !bytes.is_empty() && tx.try_send(bytes).is_err() {
            dropped += 1;
            if dropped == 1 {
                warn!("the guest is not reading its console; dropping typed input");
            }
        }
    };
    loop {
        let due = scr.pacer.due();
        tokio::select! {
            r = pump(&mut src, &mut scr.console, log.as_deref_mut(), PumpLimits::default()) => {
                match r {
                    Ok(_) => {
                        send(scr.console.take_replies());
                        scr.pacer.mark_dirty();
                    }
                    Err(Error::ConsoleClosed) => return Ok(SessionEnd::Closed),
                    Err(e) => {
                        warn!("console: {e}");
                        return Ok(SessionEnd::Closed);
                    }
                }
            }
            Some(ev) = input.recv(), if !input.is_closed() => match ev {
                ConsoleEvent::Key { down, keysym } => {
                    let before = scr.console.scroll_offset();
                    send(scr.console.key(keysym, down));
                    if scr.console.scroll_offset() != before {
                        scr.pacer.mark_dirty();
                    }
                }
                ConsoleEvent::Paste(t) => {
                    send(scr.console.paste_latin1(&t));
                    scr.pacer.mark_dirty();
                }
            },
            _ = sleep_until(due) => {}
            _ = loc.changed() => return Ok(SessionEnd::Moved),
        }
        // Whichever branch won: `pump` may have fed output and then been cancelled at
        // its final yield, before its branch ran. That output must still be drawn (it
        // may be the last lines of a panic) and answered.
        if scr.console.unrendered() {
            send(scr.console.take_replies());
            scr.pacer.mark_dirty();
        }
        if scr.pacer.ready(Instant::now()) {
            scr.render()?;
        }
    }
}

/// The log path for a domain in `dir`: `<dir>/<name>.log`, with anything but letters,
/// digits, `-`, `_` and `.` in the name replaced (a name must not escape the directory).
pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let safe = if safe.is_empty() || safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    };
    dir.join(format!("{safe}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pts_paths_are_opened() {
        assert!(acceptable_tty("/dev/pts/3"));
        assert!(acceptable_tty("/dev/pts/12345"));
        for bad in [
            "/dev/sda",
            "/dev/pts/",
            "/dev/pts/3/../../sda",
            "/dev/pts/x",
            "/etc/shadow",
            "",
            "/dev/pts/1234567890",
        ] {
            assert!(!acceptable_tty(bad), "{bad:?}");
        }
    }

    #[test]
    fn log_names_stay_in_their_directory() {
        let d = Path::new("/logs");
        assert_eq!(log_path(d, "vm1"), Path::new("/logs/vm1.log"));
        assert_eq!(log_path(d, "../x"), Path::new("/logs/_.._x.log"));
        assert_eq!(log_path(d, "a/b c"), Path::new("/logs/a_b_c.log"));
        assert_eq!(log_path(d, ""), Path::new("/logs/_.log"));
    }
}

#[cfg(test)]
mod xenstore_tests {
    use super::*;
    use crate::domain::Domain;
    use crate::view::SwitchPolicy;
    use xenvt_ring::xenstore::MemStore;

    #[tokio::test]
    async fn the_console_follows_its_xenstore_node() {
        let xs = MemStore::new();
        let (dom, port) =
            Domain::new(4, "vm4", Arc::new(SwitchPolicy::default()), (640, 400)).unwrap();
        let set = ConsoleSettings {
            source: ConsoleSpec::Xenstore,
            ..ConsoleSettings::default()
        };
        let task = tokio::spawn(run_console(port, set, Some(xs.clone())));
        // Two ptys in turn, as a reboot gives; each is read once named.
        for word in ["first-boot", "second-boot"] {
            let p = nix::pty::openpty(None, None).unwrap();
            let path = nix::unistd::ttyname(&p.slave).unwrap();
            let mut master = std::fs::File::from(p.master);
            xs.write("/local/domain/4/console/tty", path.to_str().unwrap())
                .await
                .unwrap();
            use std::io::Write;
            master.write_all(word.as_bytes()).unwrap();
            let (_, shared) = dom.attach();
            // The view's damage is reported to attached viewers; wait for the word by
            // polling the framebuffer on each wake-up.
            let strip = {
                let mut c = Console::new(&ConsoleConfig {
                    cols: 20,
                    rows: 1,
                    ..ConsoleConfig::default()
                })
                .unwrap();
                c.feed(word.as_bytes());
                let mut fb = crate::rfb::Framebuffer::new(1, 1).unwrap();
                c.render(&mut fb).unwrap();
                fb
            };
            let w = word.len() * 8;
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    {
                        let fb = dom.current().fb;
                        let fb = fb.read().unwrap();
                        let found = (0..25).any(|row| {
                            (0..16).all(|y| {
                                fb.pixels()[(row * 16 + y) * 640..][..w]
                                    == strip.pixels()[y * 160..][..w]
                            })
                        });
                        if found {
                            break;
                        }
                    }
                    shared.notify.notified().await;
                }
            })
            .await
            .expect("the console shows what the pty wrote");
            drop(p.slave);
        }
        // A value that is not a pts path is not opened.
        xs.write("/local/domain/4/console/tty", "/etc/passwd")
            .await
            .unwrap();
        task.abort();
    }
}
