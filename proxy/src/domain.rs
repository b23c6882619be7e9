//! One domain: its ordered views, the current view, and the viewers watching it.
//!
//! Lock order: the domain's state, then a viewer's state; never the other way round.
//! No lock is held across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::Notify;

use crate::region::Region;
use crate::rfb::{Framebuffer, Rect};
use crate::view::{placeholder, CursorShape, NoInput, SharedFb, ViewInput, ViewKind};

/// Identifies a view within the process.
pub type ViewId = u64;
/// Identifies a viewer within the process.
pub type ViewerId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// X keysyms of the view-switching keys.
const XK_F1: u32 = 0xffbe;
const XK_F7: u32 = 0xffc4;
const XK_CONTROL_L: u32 = 0xffe3;
const XK_CONTROL_R: u32 = 0xffe4;
const XK_ALT_L: u32 = 0xffe9;
const XK_ALT_R: u32 = 0xffea;

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
    /// Keys held down on the current view, released there when switching away.
    held: BTreeSet<u32>,
}

/// What a viewer needs to draw the current view.
#[derive(Clone)]
pub struct Current {
    /// The view.
    pub id: ViewId,
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
    state: Mutex<State>,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("domid", &self.domid)
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// A domain showing its placeholder.
    pub fn new(domid: u16, name: &str) -> Arc<Domain> {
        let id = next_id();
        let ph = ViewEntry {
            id,
            kind: ViewKind::Placeholder,
            fb: Arc::new(RwLock::new(placeholder(name))),
            input: Arc::new(NoInput),
            cursor: None,
            detail: String::new(),
            closer: Arc::new(Notify::new()),
        };
        Arc::new(Domain {
            domid,
            state: Mutex::new(State {
                name: name.to_owned(),
                views: vec![ph],
                current: id,
                viewers: BTreeMap::new(),
                held: BTreeSet::new(),
            }),
        })
    }

    /// The domain id.
    pub fn domid(&self) -> u16 {
        self.domid
    }

    /// The domain's name.
    pub fn name(&self) -> String {
        lock(&self.state).name.clone()
    }

    /// Renames the domain (the backend told us its name); viewers get the new name.
    pub fn set_name(&self, name: &str) {
        let mut st = lock(&self.state);
        if st.name == name {
            return;
        }
        st.name = name.to_owned();
        if let Some(v) = st.views.iter().find(|v| v.kind == ViewKind::Placeholder) {
            let mut fb = v.fb.write().unwrap_or_else(|p| p.into_inner());
            *fb = placeholder(name);
        }
        let placeholder_shown = st
            .views
            .iter()
            .any(|v| v.id == st.current && v.kind == ViewKind::Placeholder);
        for v in st.viewers.values() {
            v.poke(|s| {
                s.name_changed = true;
                if placeholder_shown {
                    s.view_changed = true;
                }
            });
        }
    }

    fn title(name: &str, v: &ViewEntry) -> String {
        if v.detail.is_empty() {
            format!("{name} \u{2014} {}", v.kind.label())
        } else {
            format!("{name} \u{2014} {} ({})", v.kind.label(), v.detail)
        }
    }

    /// Adds a view at the end of the order; it is not shown until switched to.
    pub fn add_view(
        self: &Arc<Self>,
        kind: ViewKind,
        fb: Framebuffer,
        input: Arc<dyn ViewInput>,
    ) -> ViewHandle {
        let id = next_id();
        let closer = Arc::new(Notify::new());
        let fb = Arc::new(RwLock::new(fb));
        lock(&self.state).views.push(ViewEntry {
            id,
            kind,
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
        }
    }

    /// Closes every view of `kind` other than `keep` (their producers are told to stop).
    pub fn close_others(&self, kind: ViewKind, keep: ViewId) {
        let st = lock(&self.state);
        for v in st.views.iter().filter(|v| v.kind == kind && v.id != keep) {
            v.closer.notify_one();
        }
    }

    /// The current view, for a viewer to draw.
    pub fn current(&self) -> Current {
        let st = lock(&self.state);
        let v = st.current_view();
        Current {
            id: v.id,
            fb: v.fb.clone(),
            name: Self::title(&st.name, v),
            cursor: v.cursor.clone(),
        }
    }

    /// The kind of the current view.
    pub fn current_kind(&self) -> ViewKind {
        lock(&self.state).current_view().kind
    }

    /// Switches to view `id`: held keys are released on the old view, and every viewer
    /// gets the new size, name and a full update. Returns false if there is no such view.
    pub fn switch_to(&self, id: ViewId) -> bool {
        let mut st = lock(&self.state);
        st.switch_to(id)
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
            // Back to the first view: the console, or the placeholder.
            let first = st.views.first().map(|v| v.id).unwrap_or(id);
            if first != id {
                st.switch_to(first);
            } else {
                st.held.clear();
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

    /// Forgets a viewer.
    pub fn detach(&self, id: ViewerId) {
        lock(&self.state).viewers.remove(&id);
    }

    /// How many viewers are attached.
    pub fn viewer_count(&self) -> usize {
        lock(&self.state).viewers.len()
    }

    /// Tells every viewer to close (the daemon is stopping).
    pub fn close_viewers(&self) {
        for v in lock(&self.state).viewers.values() {
            v.poke(|s| s.closed = true);
        }
    }

    /// A key from a viewer, for the current view. Ctrl-Alt-F1 and Ctrl-Alt-F7 switch to
    /// the console (or placeholder) and to the desktop; they are not passed on.
    pub fn key(&self, down: bool, keysym: u32) {
        let mut st = lock(&self.state);
        let ctrl = st.held.contains(&XK_CONTROL_L) || st.held.contains(&XK_CONTROL_R);
        let alt = st.held.contains(&XK_ALT_L) || st.held.contains(&XK_ALT_R);
        if ctrl && alt && (keysym == XK_F1 || keysym == XK_F7) {
            if down {
                let target = if keysym == XK_F7 {
                    st.views.iter().find(|v| v.kind == ViewKind::Desktop)
                } else {
                    st.views
                        .iter()
                        .find(|v| v.kind == ViewKind::Console)
                        .or_else(|| st.views.first())
                };
                if let Some(id) = target.map(|v| v.id) {
                    st.switch_to(id);
                }
            }
            return;
        }
        if down {
            st.held.insert(keysym);
        } else {
            st.held.remove(&keysym);
        }
        st.current_view().input.key(down, keysym);
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

impl State {
    fn current_view(&self) -> &ViewEntry {
        // The current id always names a view: views are removed only after switching away.
        self.views
            .iter()
            .find(|v| v.id == self.current)
            .unwrap_or(&self.views[0])
    }

    fn switch_to(&mut self, id: ViewId) -> bool {
        if !self.views.iter().any(|v| v.id == id) {
            return false;
        }
        if id == self.current {
            return true;
        }
        let old = self.current_view().input.clone();
        for k in std::mem::take(&mut self.held) {
            old.key(false, k);
        }
        self.current = id;
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
/// removes the view (viewers go back to the first view if it was shown).
pub struct ViewHandle {
    domain: Arc<Domain>,
    id: ViewId,
    fb: SharedFb,
    closer: Arc<Notify>,
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
        self.domain.remove_view(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Recorder(StdMutex<Vec<(bool, u32)>>);

    impl ViewInput for Recorder {
        fn key(&self, down: bool, keysym: u32) {
            self.0.lock().unwrap().push((down, keysym));
        }
        fn pointer(&self, _: u8, _: u16, _: u16) {}
        fn cut_text(&self, _: &[u8]) {}
    }

    #[test]
    fn switching_releases_held_keys_and_tells_viewers() {
        let d = Domain::new(1, "vm1");
        let (_, viewer) = d.attach();
        let rec = Arc::new(Recorder::default());
        let h = d.add_view(
            ViewKind::Desktop,
            Framebuffer::new(4, 4).unwrap(),
            rec.clone(),
        );
        assert_eq!(d.current_kind(), ViewKind::Placeholder);
        assert!(h.show());
        assert!(lock(&viewer.state).view_changed);
        assert_eq!(d.current().name, "vm1 \u{2014} desktop");
        d.key(true, XK_CONTROL_L);
        d.key(true, 0x61);
        d.key(false, 0x61);
        // Ctrl-Alt-F1 goes back to the placeholder; ctrl and alt are released on the desktop.
        d.key(true, XK_ALT_L);
        d.key(true, XK_F1);
        assert_eq!(d.current_kind(), ViewKind::Placeholder);
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(
            &got[..3],
            &[(true, XK_CONTROL_L), (true, 0x61), (false, 0x61)]
        );
        let mut released: Vec<_> = got[4..].to_vec();
        released.sort();
        assert_eq!(released, vec![(false, XK_CONTROL_L), (false, XK_ALT_L)]);
        assert!(
            !got.iter().any(|k| k.1 == XK_F1),
            "the binding is swallowed"
        );
        // Ctrl-Alt-F7 (keys held again on the placeholder) back to the desktop.
        d.key(true, XK_CONTROL_L);
        d.key(true, XK_ALT_L);
        d.key(true, XK_F7);
        assert_eq!(d.current_kind(), ViewKind::Desktop);
        // The desktop going away brings the placeholder back.
        drop(h);
        assert_eq!(d.current_kind(), ViewKind::Placeholder);
    }

    #[test]
    fn damage_reaches_viewers_of_the_current_view_only() {
        let d = Domain::new(1, "vm1");
        let (vid, viewer) = d.attach();
        let h = d.add_view(
            ViewKind::Desktop,
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
