//! Per-connection plumbing: a byte-bounded outgoing queue, and the tasks that
//! read requests from and write replies to one socket.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;

use super::wire::{DecodeError, Decoder};
use super::Xenstored;

/// Outgoing frames of one connection. Replies and watch events share it so
/// their order is kept. Its size is bounded: a peer that does not read gets
/// disconnected rather than growing our memory.
pub struct Outbox {
    inner: Mutex<OutInner>,
    max: usize,
    /// Wakes the writer (new frame or closed).
    to_writer: Notify,
    /// Wakes the reader (room freed or closed).
    to_reader: Notify,
    /// Wakes whoever waits for the close.
    on_close: Notify,
}

#[derive(Default)]
struct OutInner {
    q: VecDeque<Vec<u8>>,
    bytes: usize,
    closed: bool,
}

impl Outbox {
    /// An empty queue holding at most `max` bytes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Outbox {
            inner: Mutex::new(OutInner::default()),
            max,
            to_writer: Notify::new(),
            to_reader: Notify::new(),
            on_close: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame. On overflow the queue closes and `false` is returned:
    /// the caller drops the connection.
    pub fn push(&self, frame: Vec<u8>) -> bool {
        let mut g = self.lock();
        if g.closed {
            return false;
        }
        if g.bytes + frame.len() > self.max {
            drop(g);
            self.close();
            return false;
        }
        g.bytes += frame.len();
        g.q.push_back(frame);
        drop(g);
        self.to_writer.notify_one();
        true
    }

    /// Closes the queue; pending frames are dropped and both tasks stop.
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        g.q.clear();
        g.bytes = 0;
        drop(g);
        self.to_writer.notify_one();
        self.to_reader.notify_one();
        self.on_close.notify_waiters();
        self.on_close.notify_one();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Bytes queued.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().bytes
    }

    /// The next frame to write; `None` once closed.
    async fn pop(&self) -> Option<Vec<u8>> {
        loop {
            {
                let mut g = self.lock();
                if g.closed {
                    return None;
                }
                if let Some(f) = g.q.pop_front() {
                    g.bytes -= f.len();
                    let roomy = g.bytes <= self.max / 2;
                    drop(g);
                    if roomy {
                        self.to_reader.notify_one();
                    }
                    return Some(f);
                }
            }
            self.to_writer.notified().await;
        }
    }

    /// Waits until at most half the queue is used, so one more request's
    /// reply fits; `false` once closed.
    async fn wait_room(&self) -> bool {
        loop {
            {
                let g = self.lock();
                if g.closed {
                    return false;
                }
                if g.bytes <= self.max / 2 {
                    return true;
                }
            }
            self.to_reader.notified().await;
        }
    }

    /// Resolves once the queue is closed.
    pub async fn closed(&self) {
        loop {
            let n = self.on_close.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }
}

/// Runs one accepted connection as `domid` until the peer goes away, breaks
/// the protocol, or is dropped by the daemon.
pub async fn run(xsd: Xenstored, stream: UnixStream, domid: u32) {
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let Some((id, outbox)) = xsd.register_conn(domid, pid) else {
        return;
    };
    let (mut rd, mut wr) = stream.into_split();

    let wbox = outbox.clone();
    let writer = tokio::spawn(async move {
        while let Some(frame) = wbox.pop().await {
            let res = tokio::select! {
                r = wr.write_all(&frame) => r,
                _ = wbox.closed() => return,
            };
            if res.is_err() {
                wbox.close();
                return;
            }
        }
    });

    let mut dec = Decoder::new();
    let mut buf = vec![0u8; 8192];
    'conn: loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = outbox.closed() => break,
        };
        let mut off = 0;
        while off < n {
            match dec.feed(&buf[off..n]) {
                Ok((used, frame)) => {
                    off += used;
                    if let Some(frame) = frame {
                        if !outbox.wait_room().await {
                            break 'conn;
                        }
                        xsd.handle(id, frame);
                    }
                }
                Err(DecodeError::TooLong(len)) => {
                    xsd.bad_input(id, domid, format_args!("payload length {len} over limit"));
                    break 'conn;
                }
            }
        }
    }
    xsd.drop_conn(id);
    outbox.close();
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes() {
        let o = Outbox::new(100);
        assert!(o.push(vec![0; 60]));
        assert!(!o.push(vec![0; 60]));
        assert!(o.is_closed());
        assert_eq!(o.queued(), 0);
        assert!(o.pop().await.is_none());
        o.closed().await;
    }

    #[tokio::test]
    async fn fifo_and_room() {
        let o = Outbox::new(100);
        assert!(o.push(vec![1; 60]));
        assert!(o.push(vec![2; 30]));
        let o2 = o.clone();
        let waiter = tokio::spawn(async move { o2.wait_room().await });
        assert_eq!(o.pop().await.unwrap()[0], 1);
        assert!(waiter.await.unwrap());
        assert_eq!(o.pop().await.unwrap()[0], 2);
        o.close();
        assert!(!o.wait_room().await);
    }
}
