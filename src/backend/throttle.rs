//! Bandwidth limits (`--limit-upload`, `--limit-download`, KiB/s): a wrapper around another backend that
//! makes every transfer wait for its bytes in a token bucket.
//!
//! The limits belong to the process, not to one backend: every repository it opens (both sides of a copy, a
//! daemon's many runs) draws from the same two buckets, so the user's figure bounds what the process sends
//! and receives in total. [`set_process_limits`] sets them once; [`limited`] wraps a backend when any is set
//! (the repository URL's `connect` calls it).
//!
//! The bucket holds at most a tenth of a second of traffic and may go into debt: a transfer of `n` bytes
//! takes `n` tokens at once and waits, before it starts, until the bucket is no longer in debt. Transfers of
//! any size (a whole 16 MiB pack) therefore pass, and over any stretch of time the bytes moved stay within
//! `rate × time + burst`, whichever threads move them. Listings, stats and deletes are not counted.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{Backend, ObjectKind, ObjectWriter, RangeReader, ReadPlan, SharedBackend};
use crate::error::Result;

/// A token bucket shared by threads, in bytes per second.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    /// Tokens available (negative: owed) as of the instant.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A bucket passing `bytes_per_sec` (at least 1), starting full.
    pub fn new(bytes_per_sec: u64) -> Bucket {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = rate / 10.0;
        Bucket {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` tokens and returns how long the caller must wait before moving its bytes.
    pub fn reserve(&self, n: u64) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refilled = s.0 + now.duration_since(s.1).as_secs_f64() * self.rate;
        s.0 = refilled.min(self.burst) - n as f64;
        s.1 = now;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.rate)
        }
    }

    /// Takes `n` tokens, sleeping as long as the bucket says.
    pub fn take(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// The process's limits, in KiB/s (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub upload_kib: Option<u64>,
    pub download_kib: Option<u64>,
}

struct Buckets {
    up: Option<Arc<Bucket>>,
    down: Option<Arc<Bucket>>,
}

static PROCESS: OnceLock<Buckets> = OnceLock::new();

/// Sets the process's limits; the first call wins (the command line sets them before opening anything).
pub fn set_process_limits(limits: Limits) {
    let bucket = |kib: Option<u64>| kib.map(|k| Arc::new(Bucket::new(k.saturating_mul(1024))));
    let _ = PROCESS.set(Buckets {
        up: bucket(limits.upload_kib),
        down: bucket(limits.download_kib),
    });
}

/// `backend` throttled by the process's limits, or unchanged when there are none.
pub fn limited(backend: SharedBackend) -> SharedBackend {
    match PROCESS.get() {
        Some(b) if b.up.is_some() || b.down.is_some() => Arc::new(Throttled {
            inner: backend,
            up: b.up.clone(),
            down: b.down.clone(),
        }),
        _ => backend,
    }
}

/// A backend whose transfers wait for their bytes in the upload and download buckets.
pub struct Throttled {
    inner: SharedBackend,
    up: Option<Arc<Bucket>>,
    down: Option<Arc<Bucket>>,
}

impl Throttled {
    pub fn new(inner: SharedBackend, up: Option<Arc<Bucket>>, down: Option<Arc<Bucket>>) -> Self {
        Throttled { inner, up, down }
    }
}

fn take(bucket: &Option<Arc<Bucket>>, n: u64) {
    if let Some(b) = bucket {
        b.take(n);
    }
}

impl Backend for Throttled {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
        take(&self.up, data.len() as u64);
        self.inner.put(kind, name, data)
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool> {
        take(&self.up, data.len() as u64);
        self.inner.put_new(kind, name, data)
    }

    fn writer(&self, kind: ObjectKind) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(ThrottledWriter {
            inner: self.inner.writer(kind)?,
            up: self.up.clone(),
        }))
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        // The size is known only afterwards: the debt is paid by the next transfer's wait.
        let got = self.inner.get(kind, name)?;
        if let Some(b) = &self.down {
            b.reserve(got.len() as u64);
        }
        Ok(got)
    }

    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        take(&self.down, len);
        self.inner.get_range(kind, name, offset, len)
    }

    fn stat(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>> {
        self.inner.stat(kind, name)
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>> {
        self.inner.list(kind)
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        self.inner.delete(kind, name)
    }

    fn open_reader<'a>(
        &'a self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Box<dyn RangeReader + 'a>> {
        Ok(Box::new(ThrottledReader {
            inner: self.inner.open_reader(kind, name)?,
            down: self.down.clone(),
        }))
    }

    fn prepare(&self) -> Result<()> {
        self.inner.prepare()
    }

    fn remove_stale_temporaries(&self) -> Result<()> {
        self.inner.remove_stale_temporaries()
    }

    fn local_root(&self) -> Option<&Path> {
        self.inner.local_root()
    }

    fn read_plan(&self) -> ReadPlan {
        self.inner.read_plan()
    }
}

struct ThrottledReader<'a> {
    inner: Box<dyn RangeReader + 'a>,
    down: Option<Arc<Bucket>>,
}

impl RangeReader for ThrottledReader<'_> {
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        take(&self.down, len);
        self.inner.read_at(offset, len)
    }
}

struct ThrottledWriter {
    inner: Box<dyn ObjectWriter>,
    up: Option<Arc<Bucket>>,
}

impl Write for ThrottledWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        take(&self.up, n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for ThrottledWriter {
    fn finish(self: Box<Self>, name: &str) -> Result<u64> {
        self.inner.finish(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::memory::MemoryBackend;

    fn name() -> String {
        crate::hashing::Id::of(b"big").to_hex()
    }

    #[test]
    fn a_2_mib_object_at_512_kib_per_second_takes_about_4_seconds_each_way() {
        let mem: SharedBackend = Arc::new(MemoryBackend::new());
        let rate = 512 * 1024;
        let b = Throttled::new(
            mem,
            Some(Arc::new(Bucket::new(rate))),
            Some(Arc::new(Bucket::new(rate))),
        );
        let data = vec![7u8; 2 << 20];
        let t = Instant::now();
        b.put(ObjectKind::Pack, &name(), &data).unwrap();
        let up = t.elapsed();
        let t = Instant::now();
        // Read in 64 KiB ranges from four threads: the bucket is shared.
        std::thread::scope(|s| {
            for part in 0..4u64 {
                let b = &b;
                s.spawn(move || {
                    for k in 0..8u64 {
                        let off = (part * 8 + k) * (64 << 10);
                        let got = b
                            .get_range(ObjectKind::Pack, &name(), off, 64 << 10)
                            .unwrap();
                        assert_eq!(got.len(), 64 << 10);
                    }
                });
            }
        });
        let down = t.elapsed();
        for (what, d) in [("upload", up), ("download", down)] {
            assert!(
                d >= Duration::from_millis(3500) && d <= Duration::from_secs(6),
                "{what} of 2 MiB at 512 KiB/s took {d:?}"
            );
        }
    }

    #[test]
    fn the_bucket_passes_a_burst_then_paces() {
        let b = Bucket::new(1000);
        assert_eq!(b.reserve(100), Duration::ZERO);
        let w = b.reserve(1000);
        assert!(
            w > Duration::from_millis(900) && w <= Duration::from_secs(1),
            "{w:?}"
        );
        let w2 = b.reserve(500);
        assert!(
            w2 > w + Duration::from_millis(400),
            "debt accumulates: {w2:?}"
        );
    }
}
