//! Driving the sans-IO parsers from tokio streams.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::client_msg::{parse_client_message, ClientLimits, ClientMessage};
use super::decode::{ClientDecoder, ServerEvent};
use super::error::{Error, Result};

const READ_CHUNK: usize = 64 * 1024;

/// A buffered reader that feeds one parser call at a time and never holds more than
/// `max_buffer` unparsed bytes.
#[derive(Debug)]
pub struct RfbReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    max_buffer: usize,
}

impl<R: AsyncRead + Unpin> RfbReader<R> {
    /// Wraps a stream. `max_buffer` must exceed the largest unit the parsers accept
    /// under their limits.
    pub fn new(inner: R, max_buffer: usize) -> Self {
        RfbReader {
            inner,
            buf: Vec::new(),
            start: 0,
            max_buffer,
        }
    }

    /// The wrapped stream (for writing, if it is a duplex).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Runs `parse` on the buffered bytes, reading more until it finishes one unit.
    pub async fn next<T>(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>>,
    ) -> Result<T> {
        loop {
            if let Some((v, used)) = parse(&self.buf[self.start..])? {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(v);
            }
            let pending = self.buf.len() - self.start;
            if pending >= self.max_buffer {
                return Err(Error::TooLarge {
                    what: "buffered message",
                    len: pending as u64,
                    limit: self.max_buffer as u64,
                });
            }
            if self.start > 0 && self.start >= self.buf.len() / 2 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let want = READ_CHUNK.min(self.max_buffer - pending);
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            let n = self.inner.read(&mut self.buf[old..]).await;
            self.buf.truncate(old + *n.as_ref().unwrap_or(&0));
            if n? == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// The next message from a viewer.
    pub async fn client_message(&mut self, lim: &ClientLimits) -> Result<ClientMessage> {
        self.next(|b| parse_client_message(b, lim)).await
    }

    /// The next event from an upstream server.
    pub async fn server_event(&mut self, dec: &mut ClientDecoder) -> Result<ServerEvent> {
        self.next(|b| dec.process(b)).await
    }
}
