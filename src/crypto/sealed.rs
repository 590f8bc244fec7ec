//! A backend that seals whole repository objects (format-spec/README.md, "What is encrypted"): every object of
//! a kind that [`is_sealed`] says is written as `nonce | ciphertext | tag` with the associated data
//! `"cairn object " + <its path>` (so it cannot be moved to another name or kind), and authenticated before
//! anything reads a byte of it. A kind added later is sealed unless it is listed as plaintext here, so new
//! objects are never stored in the clear by omission.
//!
//! Plaintext kinds: the `config` (it says how to open the rest), key files (they carry their own
//! encryption), locks (who holds the repository: pid, host, time, command name; nothing from the data) and
//! packs, which [`crate::pack`] seals blob by blob because they are read in ranges.

use std::io::Write;
use std::path::Path;

use super::{object_aad, Crypto};
use crate::backend::{Backend, ObjectKind, ObjectWriter, RangeReader, ReadPlan, SharedBackend};
use crate::error::{Error, Result};

/// True if objects of `kind` are sealed whole by this layer.
pub fn is_sealed(kind: ObjectKind) -> bool {
    !matches!(
        kind,
        ObjectKind::Config | ObjectKind::Pack | ObjectKind::Lock | ObjectKind::Key
    )
}

/// Wraps `inner` so whole objects are sealed with `crypto` (returns `inner` for a plaintext repository).
pub fn wrap(inner: SharedBackend, crypto: &Crypto) -> SharedBackend {
    if !crypto.is_encrypted() {
        return inner;
    }
    std::sync::Arc::new(Sealed {
        inner,
        crypto: crypto.clone(),
    })
}

struct Sealed {
    inner: SharedBackend,
    crypto: Crypto,
}

impl Sealed {
    fn what(kind: ObjectKind, name: &str) -> String {
        kind.key(name)
    }
}

impl Backend for Sealed {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
        if !is_sealed(kind) {
            return self.inner.put(kind, name, data);
        }
        let sealed = self.crypto.seal(&object_aad(&kind.key(name)), data)?;
        self.inner.put(kind, name, &sealed)
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool> {
        if !is_sealed(kind) {
            return self.inner.put_new(kind, name, data);
        }
        let sealed = self.crypto.seal(&object_aad(&kind.key(name)), data)?;
        self.inner.put_new(kind, name, &sealed)
    }

    fn writer(&self, kind: ObjectKind) -> Result<Box<dyn ObjectWriter>> {
        if !is_sealed(kind) {
            return self.inner.writer(kind);
        }
        Ok(Box::new(SealingWriter {
            backend: self.inner.clone(),
            crypto: self.crypto.clone(),
            kind,
            buf: Vec::new(),
        }))
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let bytes = self.inner.get(kind, name)?;
        if !is_sealed(kind) {
            return Ok(bytes);
        }
        let what = Self::what(kind, name);
        Ok(self
            .crypto
            .open(&what, &object_aad(&kind.key(name)), &bytes)?
            .into_owned())
    }

    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        if !is_sealed(kind) {
            return self.inner.get_range(kind, name, offset, len);
        }
        // A sealed object is authenticated whole: read it, then cut the range from the plaintext.
        let plain = self.get(kind, name)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        plain.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
            Error::io(
                Self::what(kind, name),
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read beyond the end"),
            )
        })
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
        if !is_sealed(kind) {
            return self.inner.open_reader(kind, name);
        }
        let plain = self.get(kind, name)?;
        Ok(Box::new(InMemory(plain)))
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

/// A sealed object opened for ranged reads: its plaintext.
struct InMemory(Vec<u8>);

impl RangeReader for InMemory {
    fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
        self.0.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| {
            Error::io(
                "sealed object",
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read beyond the end"),
            )
        })
    }
}

/// A streamed write of a sealed object: gathered, then sealed and written whole at `finish`.
struct SealingWriter {
    backend: SharedBackend,
    crypto: Crypto,
    kind: ObjectKind,
    buf: Vec<u8>,
}

impl Write for SealingWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for SealingWriter {
    fn finish(self: Box<Self>, name: &str) -> Result<u64> {
        let sealed = self
            .crypto
            .seal(&object_aad(&self.kind.key(name)), &self.buf)?;
        self.backend.put(self.kind, name, &sealed)?;
        Ok(sealed.len() as u64)
    }
}
