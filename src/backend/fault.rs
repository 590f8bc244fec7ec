//! A fault-injecting wrapper around another backend, for crash and outage tests.
//!
//! Every write (a `put`, a streamed writer's `finish`, a `delete`) and every read (`get`, `get_range`) is
//! counted, from 1, in its own sequence. A test arms a [`Fault`] for the Nth write or read; that operation
//! then fails with an I/O error of the chosen kind (the object is left as before), or — for a torn write —
//! stores a truncated object and fails, as a crashing non-atomic store would, or is delayed. Everything else
//! passes through. [`FaultyBackend::writes`] tells how many writes an operation made, so a test can run it once
//! cleanly and then fail it at every write in turn.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Backend, ObjectKind, ObjectWriter, SharedBackend};
use crate::error::{Error, Result};

/// What happens to the chosen operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails with an I/O error of this kind; nothing is written.
    Fail(std::io::ErrorKind),
    /// Fails with the raw OS error (e.g. `libc::EIO`); nothing is written.
    Os(i32),
    /// Writes only the first half of the object, then fails (a write: torn; a read: returns half).
    Tear,
    /// Sleeps this long, then proceeds.
    Delay(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Read,
}

struct Armed {
    op: Op,
    nth: u64,
    fault: Fault,
    /// Fail every operation from the nth on (an outage), not just the nth.
    sticky: bool,
}

/// A backend that fails on cue. Clones share the counters and the armed faults, so a test keeps one to
/// arm and hands another to the repository.
#[derive(Clone)]
pub struct FaultyBackend {
    state: Arc<State>,
}

struct State {
    inner: SharedBackend,
    writes: AtomicU64,
    reads: AtomicU64,
    armed: Mutex<Vec<Armed>>,
}

impl FaultyBackend {
    pub fn new(inner: SharedBackend) -> FaultyBackend {
        FaultyBackend {
            state: Arc::new(State {
                inner,
                writes: AtomicU64::new(0),
                reads: AtomicU64::new(0),
                armed: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Arms `fault` for the `nth` write from now (1 = the next one).
    pub fn fail_write(&self, nth: u64, fault: Fault) {
        self.arm(Op::Write, nth, fault, false);
    }

    /// Arms `fault` for the `nth` read from now.
    pub fn fail_read(&self, nth: u64, fault: Fault) {
        self.arm(Op::Read, nth, fault, false);
    }

    /// Every write from the `nth` on fails (the store went away).
    pub fn fail_writes_from(&self, nth: u64, fault: Fault) {
        self.arm(Op::Write, nth, fault, true);
    }

    /// Writes made so far.
    pub fn writes(&self) -> u64 {
        self.state.writes.load(Ordering::SeqCst)
    }

    /// Reads made so far.
    pub fn reads(&self) -> u64 {
        self.state.reads.load(Ordering::SeqCst)
    }

    /// Disarms every fault.
    pub fn heal(&self) {
        self.state.lock().clear();
    }

    fn arm(&self, op: Op, nth: u64, fault: Fault, sticky: bool) {
        let base = match op {
            Op::Write => self.writes(),
            Op::Read => self.reads(),
        };
        self.state.lock().push(Armed {
            op,
            nth: base + nth,
            fault,
            sticky,
        });
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Armed>> {
        self.armed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an operation and returns the fault armed for it, if any.
    fn next(&self, op: Op) -> Option<Fault> {
        let counter = match op {
            Op::Write => &self.writes,
            Op::Read => &self.reads,
        };
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        self.lock()
            .iter()
            .find(|a| a.op == op && (a.nth == n || (a.sticky && n >= a.nth)))
            .map(|a| a.fault)
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
        match self.next(Op::Write) {
            None => self.inner.put(kind, name, data),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                self.inner.put(kind, name, data)
            }
            Some(Fault::Tear) => {
                self.inner.put(kind, name, &data[..data.len() / 2])?;
                Err(injected(kind, name, Fault::Tear))
            }
            Some(f) => Err(injected(kind, name, f)),
        }
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool> {
        match self.next(Op::Write) {
            None => self.inner.put_new(kind, name, data),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                self.inner.put_new(kind, name, data)
            }
            Some(Fault::Tear) => {
                self.inner.put_new(kind, name, &data[..data.len() / 2])?;
                Err(injected(kind, name, Fault::Tear))
            }
            Some(f) => Err(injected(kind, name, f)),
        }
    }

    /// Applies a read fault around `read`.
    fn read(
        &self,
        kind: ObjectKind,
        name: &str,
        read: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        match self.next(Op::Read) {
            None => read(),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                read()
            }
            Some(Fault::Tear) => {
                let mut got = read()?;
                got.truncate(got.len() / 2);
                Ok(got)
            }
            Some(f) => Err(injected(kind, name, f)),
        }
    }
}

fn injected(kind: ObjectKind, name: &str, fault: Fault) -> Error {
    let source = match fault {
        Fault::Os(code) => std::io::Error::from_raw_os_error(code),
        Fault::Fail(k) => std::io::Error::new(k, "injected fault"),
        Fault::Tear | Fault::Delay(_) => std::io::Error::other("injected torn write"),
    };
    Error::Io {
        path: format!("fault:{}", kind.key(name)).into(),
        source,
    }
}

impl Backend for FaultyBackend {
    fn location(&self) -> String {
        format!("fault:{}", self.state.inner.location())
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
        self.state.put(kind, name, data)
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool> {
        self.state.put_new(kind, name, data)
    }

    fn writer(&self, kind: ObjectKind) -> Result<Box<dyn ObjectWriter>> {
        // Buffered here, then stored with one `put` when finished, so a torn finish can store half of it.
        Ok(Box::new(FaultyWriter {
            state: self.state.clone(),
            kind,
            buf: Vec::new(),
        }))
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        self.state
            .read(kind, name, || self.state.inner.get(kind, name))
    }

    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.state.read(kind, name, || {
            self.state.inner.get_range(kind, name, offset, len)
        })
    }

    fn stat(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>> {
        self.state.inner.stat(kind, name)
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>> {
        self.state.inner.list(kind)
    }

    fn prepare(&self) -> Result<()> {
        self.state.inner.prepare()
    }

    fn remove_stale_temporaries(&self) -> Result<()> {
        self.state.inner.remove_stale_temporaries()
    }

    fn local_root(&self) -> Option<&std::path::Path> {
        self.state.inner.local_root()
    }

    fn read_plan(&self) -> super::ReadPlan {
        self.state.inner.read_plan()
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        match self.state.next(Op::Write) {
            None | Some(Fault::Tear) => self.state.inner.delete(kind, name),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                self.state.inner.delete(kind, name)
            }
            Some(f) => Err(injected(kind, name, f)),
        }
    }
}

struct FaultyWriter {
    state: Arc<State>,
    kind: ObjectKind,
    buf: Vec<u8>,
}

impl Write for FaultyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for FaultyWriter {
    fn finish(self: Box<Self>, name: &str) -> Result<u64> {
        self.state.put(self.kind, name, &self.buf)?;
        Ok(self.buf.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    fn name(n: u8) -> String {
        crate::hashing::Id::of(&[n]).to_hex()
    }

    #[test]
    fn unarmed_it_keeps_the_backend_contract() {
        let b = FaultyBackend::new(Arc::new(MemoryBackend::new()));
        crate::backend::contract::holds_for(&b);
    }

    #[test]
    fn the_nth_write_fails_and_leaves_nothing() {
        let b = FaultyBackend::new(Arc::new(MemoryBackend::new()));
        b.fail_write(2, Fault::Os(libc::EIO));
        b.put(ObjectKind::Snapshot, &name(1), b"one").unwrap();
        let e = b.put(ObjectKind::Snapshot, &name(2), b"two").unwrap_err();
        assert!(matches!(&e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EIO)));
        assert_eq!(b.stat(ObjectKind::Snapshot, &name(2)).unwrap(), None);
        b.put(ObjectKind::Snapshot, &name(3), b"three").unwrap();
        assert_eq!(b.writes(), 3);
    }

    #[test]
    fn a_torn_streamed_write_stores_half_and_fails() {
        let b = FaultyBackend::new(Arc::new(MemoryBackend::new()));
        b.fail_write(1, Fault::Tear);
        let mut w = b.writer(ObjectKind::Pack).unwrap();
        w.write_all(b"0123456789").unwrap();
        assert!(w.finish(&name(1)).is_err());
        assert_eq!(b.get(ObjectKind::Pack, &name(1)).unwrap(), b"01234");
    }

    #[test]
    fn an_outage_fails_every_later_write_until_healed() {
        let b = FaultyBackend::new(Arc::new(MemoryBackend::new()));
        b.fail_writes_from(1, Fault::Fail(std::io::ErrorKind::ConnectionReset));
        for n in 0..3 {
            assert!(b.put(ObjectKind::Snapshot, &name(n), b"x").is_err());
        }
        b.heal();
        b.put(ObjectKind::Snapshot, &name(9), b"x").unwrap();
    }

    #[test]
    fn the_nth_read_fails() {
        let b = FaultyBackend::new(Arc::new(MemoryBackend::new()));
        b.put(ObjectKind::Pack, &name(1), b"abcdef").unwrap();
        b.fail_read(2, Fault::Os(libc::EACCES));
        assert_eq!(
            b.get_range(ObjectKind::Pack, &name(1), 1, 2).unwrap(),
            b"bc"
        );
        assert!(b.get(ObjectKind::Pack, &name(1)).is_err());
        assert_eq!(b.get(ObjectKind::Pack, &name(1)).unwrap(), b"abcdef");
    }
}
