//! One domain: its ordered views, the current view, and the viewers watching it.
//!
//! Lock order: the domain's state, then a viewer's state; never the other way round.
//! No lock is held across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use crate::metrics::DomainStats;
use crate::region::Region;
use crate::rfb::{Framebuffer, Rect};
use crate::view::{
    ConsoleEvent, ConsoleInput, CursorShape, SharedFb, SwitchPolicy, Target, ViewInput, ViewKind,
    MOD_ALT, MOD_CTRL, MOD_SHIFT,
};

/// Identifies a view within the process.
pub type ViewId = u64;
/// Identifies a viewer within the process.
pub type ViewerId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// X keysyms of the modifiers that bindings use.
const XK_SHIFT_L: u32 = 0xffe1;
const XK_SHIFT_R: u32 = 0xffe2;
const XK_CONTROL_L: u32 = 0xffe3;
const XK_CONTROL_R: u32 = 0xffe4;
const XK_ALT_L: u32 = 0xffe9;
const XK_ALT_R: u32 = 0xffea;
const XK_META_L: u32 = 0xffe7;
const XK_META_R: u32 = 0xffe8;

/// Keys one viewer may hold down at once; more presses are dropped (a hostile viewer
/// must not grow the set without bound).
pub const MAX_HELD_KEYS: usize = 32;
/// Console input events queued before more are dropped (the console task drains them).
pub const CONSOLE_QUEUE: usize = 1024;

/// Locks a mutex; a poisoned lock still holds consistent state here (every critical
/// section leaves it valid before anything can panic), so carry on with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a viewer's writer has to do, filled in by the domain and the viewer's reader.
#[derive(Debug, Default)]
pub struct ViewerState {
    /// Changed areas of the current view.
    pub damage: Region,
    /// The current view changed: name, size, cursor and every pixel are due.
    pub view_changed: bool,
    /// The current view's size may have changed.
    pub resized: bool,
    /// The current view's name changed.
    pub name_changed: bool,
    /// The current view's cursor changed.
    pub cursor_changed: bool,
    /// Ring the bell.
    pub bell: bool,
    /// Clipboard text from the view (the latest only).
    pub cut_text: Option<Arc<Vec<u8>>>,
    /// The domain is going away: close.
    pub closed: bool,
}

/// A viewer as the domain sees it: state to fill and a wake-up for its writer.
#[derive(Debug, Default)]
pub struct ViewerShared {
    /// Guarded by its own lock; taken after the domain's.
    pub state: Mutex<ViewerState>,
    /// Wakes the viewer's writer (one waiter; permits are kept).
    pub notify: Notify,
}

impl ViewerShared {
    fn poke(&self, f: impl FnOnce(&mut ViewerState)) {
        f(&mut lock(&self.state));
        self.notify.notify_one();
    }
}

struct ViewEntry {
    id: ViewId,
    kind: ViewKind,
    /// What bindings call it: "console", "desktop", or a configured upstream's name.
    slot: String,
    fb: SharedFb,
    input: Arc<dyn ViewInput>,
    cursor: Option<Arc<CursorShape>>,
    /// The producer's own name for what it shows (an upstream's desktop name).
    detail: String,
    /// Wakes the view's producer when the view is removed or replaced.
    closer: Arc<Notify>,
}

struct State {
    name: String,
    views: Vec<ViewEntry>,
    current: ViewId,
    viewers: BTreeMap<ViewerId, Arc<ViewerShared>>,
    /// Keys each viewer holds down (bounded per viewer), to match bindings.
    pressed: BTreeMap<ViewerId, BTreeSet<u32>>,
    /// Keys delivered down to the current view, released there when switching away.
    sent: BTreeSet<u32>,
    /// Binding keys whose release is swallowed too.
    swallowed: BTreeSet<u32>,
    /// When a viewer last switched by hand: the desktop does not take over right after.
    manual_at: Option<Instant>,
    /// Changes of the current view, for the metrics.
    switches: u64,
}

/// What a viewer needs to draw the current view.
#[derive(Clone)]
pub struct Current {
    /// The view.
    pub id: ViewId,
    /// Its kind.
    pub kind: ViewKind,
    /// Its pixels.
    pub fb: SharedFb,
    /// The desktop name to show.
    pub name: String,
    /// Its cursor, if it has one.
    pub cursor: Option<Arc<CursorShape>>,
}

/// One domain served by this process.
pub struct Domain {
    domid: u16,
    policy: Arc<SwitchPolicy>,
    state: Mutex<State>,
    stats: DomainStats,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("domid", &self.domid)
            .finish_non_exhaustive()
    }
}

/// The console task's side of the console view: the view to draw into and the viewers'
/// input for the guest.
#[derive(Debug)]
pub struct ConsolePort {
    /// The console view (it lives as long as the domain).
    pub view: ViewHandle,
    /// Keys and pastes from viewers, in order.
    pub input: mpsc::Receiver<ConsoleEvent>,
}

impl Domain {
    /// A domain whose first view is its console, `console_size` pixels (drawn by whoever
    /// holds the returned port); `policy` says how views switch.
    pub fn new(
        domid: u16,
        name: &str,
        policy: Arc<SwitchPolicy>,
        console_size: (u16, u16),
    ) -> crate::Result<(Arc<Domain>, ConsolePort)> {
        let id = next_id();
        let (tx, rx) = mpsc::channel(CONSOLE_QUEUE);
        let fb = Arc::new(RwLock::new(Framebuffer::new(
            console_size.0,
            console_size.1,
        )?));
        let closer = Arc::new(Notify::new());
        let console = ViewEntry {
            id,
            kind: ViewKind::Console,
            slot: "console".into(),
            fb: fb.clone(),
            input: Arc::new(ConsoleInput::new(tx)),
            cursor: None,
            detail: String::new(),
            closer: closer.clone(),
        };
        let dom = Arc::new(Domain {
            domid,
            policy,
            state: Mutex::new(State {
                name: name.to_owned(),
                views: vec![console],
                current: id,
                viewers: BTreeMap::new(),
                pressed: BTreeMap::new(),
                sent: BTreeSet::new(),
                swallowed: BTreeSet::new(),
                manual_at: None,
                switches: 0,
            }),
            stats: DomainStats::default(),
        });
        let view = ViewHandle {
            domain: dom.clone(),
            id,
            fb,
            closer,
            permanent: true,
        };
        Ok((dom, ConsolePort { view, input: rx }))
    }

    /// The domain id.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The domain's name.
    pub fn name(&self) -> String {
        lock(&self.state).name.clone()
    }

    /// How views switch.
    pub fn policy(&self) -> &SwitchPolicy {
        &self.policy
    }

    /// Renames the domain (the backend or xenstore told us its name); viewers get the
    /// new name.
    pub fn set_name(&self, name: &str) {
        let mut st = lock(&self.state);
        if st.name == name {
            return;
        }
        st.name = name.to_owned();
        for v in st.viewers.values() {
            v.poke(|s| s.name_changed = true);
        }
    }

    fn title(name: &str, v: &ViewEntry) -> String {
        let label = match v.kind {
            ViewKind::Upstream => v.slot.as_str(),
            k => k.label(),
        };
        if v.detail.is_empty() {
            format!("{name} \u{2014} {label}")
        } else {
            format!("{name} \u{2014} {label} ({})", v.detail)
        }
    }

    /// Adds a view at the end of the order; it is not shown until switched to. `slot`
    /// is what bindings call it (the kind's label for the desktop).
    pub fn add_view(
        self: &Arc<Self>,
        kind: ViewKind,
        slot: &str,
        fb: Framebuffer,
        input: Arc<dyn ViewInput>,
    ) -> ViewHandle {
        let id = next_id();
        let closer = Arc::new(Notify::new());
        let fb = Arc::new(RwLock::new(fb));
        lock(&self.state).views.push(ViewEntry {
            id,
            kind,
            slot: slot.to_owned(),
            fb: fb.clone(),
            input,
            cursor: None,
            detail: String::new(),
            closer: closer.clone(),
        });
        ViewHandle {
            domain: self.clone(),
            id,
            fb,
            closer,
            permanent: false,
        }
    }

    /// Closes every view in `slot` other than `keep` (their producers are told to stop).
    pub fn close_others(&self, slot: &str, keep: ViewId) {
        let st = lock(&self.state);
        for v in st.views.iter().filter(|v| v.slot == slot && v.id != keep) {
            v.closer.notify_one();
        }
    }

    /// The current view, for a viewer to draw.
    pub fn current(&self) -> Current {
        let st = lock(&self.state);
        let v = st.current_view();
        Current {
            id: v.id,
            kind: v.kind,
            fb: v.fb.clone(),
            name: Self::title(&st.name, v),
            cursor: v.cursor.clone(),
        }
    }

    /// The current view's label: its kind, or its slot for a configured upstream.
    pub fn current_label(&self) -> String {
        let st = lock(&self.state);
        let v = st.current_view();
        match v.kind {
            ViewKind::Upstream => v.slot.clone(),
            k => k.label().to_owned(),
        }
    }

    /// The kind of the current view.
    pub fn current_kind(&self) -> ViewKind {
        lock(&self.state).current_view().kind
    }

    /// The slots of the views, in order.
    pub fn slots(&self) -> Vec<String> {
        lock(&self.state)
            .views
            .iter()
            .map(|v| v.slot.clone())
            .collect()
    }

    /// Switches to view `id`: held keys are released on the old view, and every viewer
    /// gets the new size, name and a full update. Returns false if there is no such view.
    pub fn switch_to(&self, id: ViewId) -> bool {
        lock(&self.state).switch_to(id)
    }

    /// Switches to the first view of `kind`, if there is one.
    pub fn switch_to_kind(&self, kind: ViewKind) -> bool {
        let mut st = lock(&self.state);
        match st.views.iter().find(|v| v.kind == kind) {
            Some(v) => {
                let id = v.id;
                st.switch_to(id)
            }
            None => false,
        }
    }

    fn remove_view(&self, id: ViewId) {
        let mut st = lock(&self.state);
        if st.current == id {
            // Back to the first view: the console.
            let first = st.views.first().map(|v| v.id).unwrap_or(id);
            if first != id {
                st.switch_to(first);
            } else {
                st.sent.clear();
            }
        }
        st.views.retain(|v| v.id != id);
    }

    /// Registers a viewer; it is told about changes of the current view from now on.
    pub fn attach(&self) -> (ViewerId, Arc<ViewerShared>) {
        let id = next_id();
        let v = Arc::new(ViewerShared::default());
        lock(&self.state).viewers.insert(id, v.clone());
        (id, v)
    }

    /// Forgets a viewer; keys it still held are released on the current view.
    pub fn detach(&self, id: ViewerId) {
        let mut st = lock(&self.state);
        st.viewers.remove(&id);
        let held = st.pressed.remove(&id).unwrap_or_default();
        for k in held {
            let others = st.pressed.values().any(|s| s.contains(&k));
            if !others && st.sent.remove(&k) {
                st.current_view().input.key(false, k);
            }
        }
    }

    /// The domain's counters.
    pub fn stats(&self) -> &DomainStats {
        &self.stats
    }

    /// Changes of the current view so far.
    pub fn view_switches(&self) -> u64 {
        lock(&self.state).switches
    }

    /// How many viewers are attached.
    pub fn viewer_count(&self) -> usize {
        lock(&self.state).viewers.len()
    }

    /// Tells every viewer to close (the daemon is stopping or the domain went away).
    pub fn close_viewers(&self) {
        for v in lock(&self.state).viewers.values() {
            v.poke(|s| s.closed = true);
        }
    }

    /// A key from viewer `who`, for the current view. A key that completes a binding
    /// switches views and is swallowed (its release too).
    pub fn key(&self, who: ViewerId, down: bool, keysym: u32) {
        let mut st = lock(&self.state);
        let st = &mut *st;
        if !down {
            if let Some(p) = st.pressed.get_mut(&who) {
                p.remove(&keysym);
            }
            if st.swallowed.remove(&keysym) {
                return;
            }
            // A release the view never saw pressed (pressed before a switch) stays here.
            if st.sent.remove(&keysym) {
                st.current_view().input.key(false, keysym);
            }
            return;
        }
        let mods = st
            .pressed
            .get(&who)
            .map(|p| modifiers(p.iter().copied()))
            .unwrap_or(0);
        if let Some(b) = self.policy.binding(mods, keysym) {
            st.swallowed.insert(keysym);
            if let Some(id) = st.target(&b.target) {
                st.switch_to(id);
                st.manual_at = Some(Instant::now());
            }
            return;
        }
        let p = st.pressed.entry(who).or_default();
        if p.len() >= MAX_HELD_KEYS && !p.contains(&keysym) {
            return;
        }
        p.insert(keysym);
        st.sent.insert(keysym);
        st.current_view().input.key(true, keysym);
    }

    /// A pointer event from a viewer, clamped into the current view.
    pub fn pointer(&self, buttons: u8, x: u16, y: u16) {
        let st = lock(&self.state);
        let v = st.current_view();
        let (w, h) = {
            let fb = v.fb.read().unwrap_or_else(|p| p.into_inner());
            (fb.width(), fb.height())
        };
        v.input.pointer(
            buttons,
            x.min(w.saturating_sub(1)),
            y.min(h.saturating_sub(1)),
        );
    }

    /// Clipboard text from a viewer, for the current view.
    pub fn cut_text(&self, text: &[u8]) {
        lock(&self.state).current_view().input.cut_text(text);
    }

    fn for_viewers_of(&self, view: ViewId, f: impl Fn(&mut ViewerState)) {
        let st = lock(&self.state);
        if st.current != view {
            return;
        }
        for v in st.viewers.values() {
            v.poke(&f);
        }
    }
}

/// The binding modifiers among `keys`.
fn modifiers(keys: impl Iterator<Item = u32>) -> u8 {
    keys.fold(0, |m, k| {
        m | match k {
            XK_CONTROL_L | XK_CONTROL_R => MOD_CTRL,
            XK_ALT_L | XK_ALT_R | XK_META_L | XK_META_R => MOD_ALT,
            XK_SHIFT_L | XK_SHIFT_R => MOD_SHIFT,
            _ => 0,
        }
    })
}

impl State {
    fn current_view(&self) -> &ViewEntry {
        // The current id always names a view: views are removed only after switching away,
        // and the console is never removed.
        self.views
            .iter()
            .find(|v| v.id == self.current)
            .unwrap_or(&self.views[0])
    }

    fn target(&self, t: &Target) -> Option<ViewId> {
        let slot = match t {
            Target::Console => "console",
            Target::Desktop => "desktop",
            Target::Named(n) => n.as_str(),
        };
        self.views.iter().find(|v| v.slot == slot).map(|v| v.id)
    }

    fn switch_to(&mut self, id: ViewId) -> bool {
        if !self.views.iter().any(|v| v.id == id) {
            return false;
        }
        if id == self.current {
            return true;
        }
        let old = self.current_view().input.clone();
        for k in std::mem::take(&mut self.sent) {
            old.key(false, k);
        }
        self.current = id;
        self.switches += 1;
        for v in self.viewers.values() {
            v.poke(|s| {
                s.view_changed = true;
                s.damage.clear();
            });
        }
        true
    }
}

/// A producer's handle on its view: draw, report damage and changes. Dropping it
/// removes the view (viewers go back to the console if it was shown); the console's own
/// handle is permanent.
pub struct ViewHandle {
    domain: Arc<Domain>,
    id: ViewId,
    fb: SharedFb,
    closer: Arc<Notify>,
    permanent: bool,
}

impl std::fmt::Debug for ViewHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewHandle").field("id", &self.id).finish()
    }
}

impl ViewHandle {
    /// The view's id.
    pub fn id(&self) -> ViewId {
        self.id
    }

    /// The domain it belongs to.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// The view's framebuffer, to draw into (take the write lock briefly).
    pub fn fb(&self) -> &SharedFb {
        &self.fb
    }

    /// Resolves when the view was closed by the domain (replaced by a newer one).
    pub fn closer(&self) -> Arc<Notify> {
        self.closer.clone()
    }

    /// Shows this view.
    pub fn show(&self) -> bool {
        self.domain.switch_to(self.id)
    }

    /// Shows this view unless a viewer switched views by hand within the policy's hold
    /// time (someone chose what to look at; a desktop arriving does not override that).
    /// Returns whether it is shown.
    pub fn show_unless_held(&self) -> bool {
        let hold = self.domain.policy.manual_hold;
        let mut st = lock(&self.domain.state);
        if st
            .manual_at
            .is_some_and(|t| t.elapsed() < hold && st.current != self.id)
        {
            return false;
        }
        st.switch_to(self.id)
    }

    /// Whether viewers see this view now.
    pub fn is_shown(&self) -> bool {
        lock(&self.domain.state).current == self.id
    }

    /// Areas that changed, for viewers to re-encode.
    pub fn damage(&self, region: &Region) {
        if region.is_empty() {
            return;
        }
        self.domain
            .for_viewers_of(self.id, |s| s.damage.add_region(region));
    }

    /// The framebuffer was resized (its content is all new).
    pub fn resized(&self) {
        self.domain.for_viewers_of(self.id, |s| {
            s.resized = true;
            s.damage.clear();
            s.damage.add(Rect::new(0, 0, u16::MAX, u16::MAX));
        });
    }

    /// The producer's name for what it shows (an upstream's desktop name), shown to
    /// viewers after the view's label.
    pub fn set_detail(&self, detail: &str) {
        {
            let mut st = lock(&self.domain.state);
            if let Some(v) = st.views.iter_mut().find(|v| v.id == self.id) {
                v.detail = detail
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
            }
        }
        self.domain
            .for_viewers_of(self.id, |s| s.name_changed = true);
    }

    /// A new cursor shape.
    pub fn set_cursor(&self, c: CursorShape) {
        {
            let mut st = lock(&self.domain.state);
            if let Some(v) = st.views.iter_mut().find(|v| v.id == self.id) {
                v.cursor = Some(Arc::new(c));
            }
        }
        self.domain
            .for_viewers_of(self.id, |s| s.cursor_changed = true);
    }

    /// Ring the viewers' bell.
    pub fn bell(&self) {
        self.domain.for_viewers_of(self.id, |s| s.bell = true);
    }

    /// Clipboard text for the viewers.
    pub fn cut_text(&self, text: Vec<u8>) {
        let t = Arc::new(text);
        self.domain
            .for_viewers_of(self.id, |s| s.cut_text = Some(t.clone()));
    }
}

impl Drop for ViewHandle {
    fn drop(&mut self) {
        if !self.permanent {
            self.domain.remove_view(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{Binding, NoInput};
    use std::sync::Mutex as StdMutex;
    use std::time::Duration;

    const XK_F1: u32 = 0xffbe;
    const XK_F2: u32 = 0xffbf;
    const XK_F7: u32 = 0xffc4;

    #[derive(Default)]
    struct Recorder(StdMutex<Vec<(bool, u32)>>);

    impl ViewInput for Recorder {
        fn key(&self, down: bool, keysym: u32) {
            self.0.lock().unwrap().push((down, keysym));
        }
        fn pointer(&self, _: u8, _: u16, _: u16) {}
        fn cut_text(&self, _: &[u8]) {}
    }

    fn domain(policy: SwitchPolicy) -> (Arc<Domain>, ConsolePort) {
        Domain::new(1, "vm1", Arc::new(policy), (16, 16)).unwrap()
    }

    fn console_keys(port: &mut ConsolePort) -> Vec<(bool, u32)> {
        let mut v = Vec::new();
        while let Ok(e) = port.input.try_recv() {
            if let ConsoleEvent::Key { down, keysym } = e {
                v.push((down, keysym));
            }
        }
        v
    }

    #[test]
    fn switching_releases_held_keys_and_tells_viewers() {
        let (d, mut port) = domain(SwitchPolicy::default());
        let (who, viewer) = d.attach();
        let rec = Arc::new(Recorder::default());
        let h = d.add_view(
            ViewKind::Desktop,
            "desktop",
            Framebuffer::new(4, 4).unwrap(),
            rec.clone(),
        );
        assert_eq!(d.current_kind(), ViewKind::Console);
        assert_eq!(d.current().name, "vm1 \u{2014} console");
        assert!(h.show());
        assert!(lock(&viewer.state).view_changed);
        assert_eq!(d.current().name, "vm1 \u{2014} desktop");
        d.key(who, true, XK_CONTROL_L);
        d.key(who, true, 0x61);
        d.key(who, false, 0x61);
        // Ctrl-Alt-F1 goes back to the console; ctrl and alt are released on the desktop.
        d.key(who, true, XK_ALT_L);
        d.key(who, true, XK_F1);
        assert_eq!(d.current_kind(), ViewKind::Console);
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(
            &got[..4],
            &[
                (true, XK_CONTROL_L),
                (true, 0x61),
                (false, 0x61),
                (true, XK_ALT_L)
            ]
        );
        let mut released: Vec<_> = got[4..].to_vec();
        released.sort();
        assert_eq!(released, vec![(false, XK_CONTROL_L), (false, XK_ALT_L)]);
        assert!(
            !got.iter().any(|k| k.1 == XK_F1),
            "the binding is swallowed"
        );
        // Still holding ctrl-alt: F7 goes straight back, and nothing reached the console
        // (the releases of keys it never saw pressed stay out too).
        d.key(who, false, XK_F1);
        d.key(who, true, XK_F7);
        assert_eq!(d.current_kind(), ViewKind::Desktop);
        d.key(who, false, XK_F7);
        d.key(who, false, XK_CONTROL_L);
        d.key(who, false, XK_ALT_L);
        assert_eq!(console_keys(&mut port), vec![]);
        // The desktop going away brings the console back.
        drop(h);
        assert_eq!(d.current_kind(), ViewKind::Console);
        d.key(who, true, 0x62);
        assert_eq!(console_keys(&mut port), vec![(true, 0x62)]);
    }

    #[test]
    fn configured_bindings_reach_named_views() {
        let mut p = SwitchPolicy::default();
        p.bindings
            .push(Binding::parse("ctrl-alt-f2", Target::Named("mon".into())).unwrap());
        let (d, _port) = domain(p);
        let (who, _) = d.attach();
        let _mon = d.add_view(
            ViewKind::Upstream,
            "mon",
            Framebuffer::new(4, 4).unwrap(),
            Arc::new(NoInput),
        );
        d.key(who, true, XK_CONTROL_R);
        d.key(who, true, XK_ALT_R);
        d.key(who, true, XK_F7);
        assert_eq!(
            d.current_kind(),
            ViewKind::Console,
            "no desktop: nothing to switch to"
        );
        d.key(who, true, XK_F2);
        assert_eq!(d.current_kind(), ViewKind::Upstream);
        assert_eq!(d.current().name, "vm1 \u{2014} mon");
        assert_eq!(d.slots(), vec!["console", "mon"]);
    }

    #[test]
    fn a_desktop_waits_after_a_switch_by_hand() {
        let p = SwitchPolicy {
            manual_hold: Duration::from_secs(3600),
            ..SwitchPolicy::default()
        };
        let (d, _port) = domain(p);
        let (who, _) = d.attach();
        let fb = || Framebuffer::new(4, 4).unwrap();
        let h = d.add_view(ViewKind::Desktop, "desktop", fb(), Arc::new(NoInput));
        assert!(
            h.show_unless_held(),
            "nobody switched by hand: the desktop takes over"
        );
        d.key(who, true, XK_CONTROL_L);
        d.key(who, true, XK_ALT_L);
        d.key(who, true, XK_F1);
        assert_eq!(d.current_kind(), ViewKind::Console);
        drop(h);
        let h2 = d.add_view(ViewKind::Desktop, "desktop", fb(), Arc::new(NoInput));
        assert!(!h2.show_unless_held(), "switched by hand a moment ago");
        assert_eq!(d.current_kind(), ViewKind::Console);
        // With no hold the desktop takes over at once.
        let (d, _port) = domain(SwitchPolicy {
            manual_hold: Duration::ZERO,
            ..SwitchPolicy::default()
        });
        let (who, _) = d.attach();
        d.key(who, true, XK_CONTROL_L);
        d.key(who, true, XK_ALT_L);
        d.key(who, true, XK_F1);
        let h = d.add_view(ViewKind::Desktop, "desktop", fb(), Arc::new(NoInput));
        assert!(h.show_unless_held());
    }

    #[test]
    fn a_leaving_viewer_releases_its_keys_and_held_keys_are_bounded() {
        let (d, mut port) = domain(SwitchPolicy::default());
        let (who, _) = d.attach();
        for k in 0..1000u32 {
            d.key(who, true, 0x100 + k);
        }
        assert_eq!(console_keys(&mut port).len(), MAX_HELD_KEYS);
        d.detach(who);
        let released = console_keys(&mut port);
        assert_eq!(released.len(), MAX_HELD_KEYS);
        assert!(released.iter().all(|k| !k.0));
    }

    #[test]
    fn damage_reaches_viewers_of_the_current_view_only() {
        let (d, _port) = domain(SwitchPolicy::default());
        let (vid, viewer) = d.attach();
        let h = d.add_view(
            ViewKind::Desktop,
            "desktop",
            Framebuffer::new(8, 8).unwrap(),
            Arc::new(NoInput),
        );
        let mut g = Region::new();
        g.add(Rect::new(0, 0, 2, 2));
        h.damage(&g);
        assert!(lock(&viewer.state).damage.is_empty(), "not shown yet");
        h.show();
        h.damage(&g);
        assert_eq!(lock(&viewer.state).damage.rects(), &[Rect::new(0, 0, 2, 2)]);
        d.detach(vid);
        assert_eq!(d.viewer_count(), 0);
    }
}
