//! A per-domain console log with size-bounded rotation: `console.log`, then
//! `console.log.1` (newest old) up to `console.log.<keep>`, each at most `max_bytes`.
//!
//! The guest decides what is written, so the size bound holds per write as well: a write
//! larger than the room left is split across files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// A log file that rotates by size.
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
    /// A write failed: the log is off from then on (one error, not one per write).
    broken: bool,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io {
        what: what.into(),
        source,
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(io("log open"))
}

impl ConsoleLog {
    /// Opens (appending to) `path`; files hold at most `max_bytes` (at least 1) and `keep`
    /// (at least 1) rotated files are kept beside it.
    pub fn open(path: impl Into<PathBuf>, max_bytes: u64, keep: u32) -> Result<Self> {
        if max_bytes == 0 {
            return Err(Error::ConsoleConfig("log max_bytes must be positive"));
        }
        if keep == 0 {
            return Err(Error::ConsoleConfig("log keep must be positive"));
        }
        let path = path.into();
        let file = open(&path)?;
        let size = file.metadata().map_err(io("log stat"))?.len();
        Ok(ConsoleLog {
            path,
            file,
            size,
            max_bytes,
            keep,
            broken: false,
        })
    }

    /// The path of rotated file `n` (1 is the newest).
    pub fn rotated(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// The live file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn rotate(&mut self) -> Result<()> {
        for n in (1..self.keep).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1)).map_err(io("log rotate"))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1)).map_err(io("log rotate"))?;
        self.file = open(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Appends console output, rotating as needed. After the first error the log is off
    /// and further writes do nothing.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if self.broken {
            return Ok(());
        }
        let r = self.append(bytes);
        self.broken = r.is_err();
        r
    }

    fn append(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            if self.size >= self.max_bytes {
                self.rotate()?;
            }
            let room = self.max_bytes - self.size;
            let n = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.file.write_all(&bytes[..n]).map_err(io("log write"))?;
            self.size += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_bounds_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        let mut log = ConsoleLog::open(&p, 100, 2).unwrap();
        let mut written = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![b'a' + (i % 26); 7 + usize::from(i % 5) * 20];
            log.write(&chunk).unwrap();
            written.extend_from_slice(&chunk);
        }
        log.write(&[b'Z'; 450]).unwrap();
        written.extend_from_slice(&[b'Z'; 450]);
        let live = std::fs::read(&p).unwrap();
        let one = std::fs::read(log.rotated(1)).unwrap();
        let two = std::fs::read(log.rotated(2)).unwrap();
        assert!(!log.rotated(3).exists());
        assert!(!live.is_empty() && live.len() <= 100, "{}", live.len());
        // A file is rotated only when full.
        assert_eq!((one.len(), two.len()), (100, 100));
        // The files, oldest first, are the tail of what was written.
        let tail = [two, one, live].concat();
        assert!(written.ends_with(&tail));
    }

    #[test]
    fn reopen_appends_and_counts_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("console.log");
        ConsoleLog::open(&p, 10, 1)
            .unwrap()
            .write(b"12345678")
            .unwrap();
        let mut log = ConsoleLog::open(&p, 10, 1).unwrap();
        log.write(b"abcd").unwrap();
        assert_eq!(std::fs::read(log.rotated(1)).unwrap(), b"12345678ab");
        assert_eq!(std::fs::read(&p).unwrap(), b"cd");
    }

    #[test]
    fn bad_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        assert!(matches!(
            ConsoleLog::open(&p, 0, 1),
            Err(Error::ConsoleConfig(_))
        ));
        assert!(matches!(
            ConsoleLog::open(&p, 1, 0),
            Err(Error::ConsoleConfig(_))
        ));
    }
}
