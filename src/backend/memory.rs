//! A repository held in memory, for unit tests: the same contract as the other backends, nothing durable.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{check_name, not_found, short_object, Backend, ObjectKind, ObjectWriter};
use crate::error::Result;

type Objects = BTreeMap<(ObjectKind, String), Arc<Vec<u8>>>;

/// An in-memory backend; clones share the same objects.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    objects: Arc<RwLock<Objects>>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    // A writer that panicked cannot leave a half-inserted map entry (inserts are single calls), so a
    // poisoned lock is still consistent.
    fn read(&self) -> RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(|p| p.into_inner())
    }

    fn object(&self, kind: ObjectKind, name: &str) -> Result<Arc<Vec<u8>>> {
        check_name(kind, name)?;
        self.read()
            .get(&(kind, name.to_string()))
            .cloned()
            .ok_or_else(|| not_found(format!("memory:{}", kind.key(name))))
    }
}

impl Backend for MemoryBackend {
    fn location(&self) -> String {
        "memory:".into()
    }

    fn put(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<()> {
        check_name(kind, name)?;
        self.write()
            .insert((kind, name.to_string()), Arc::new(data.to_vec()));
        Ok(())
    }

    fn put_new(&self, kind: ObjectKind, name: &str, data: &[u8]) -> Result<bool> {
        check_name(kind, name)?;
        let mut map = self.write();
        let key = (kind, name.to_string());
        if map.contains_key(&key) {
            return Ok(false);
        }
        map.insert(key, Arc::new(data.to_vec()));
        Ok(true)
    }

    fn writer(&self, kind: ObjectKind) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(MemoryWriter {
            backend: self.clone(),
            kind,
            buf: Vec::new(),
        }))
    }

    fn get(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let obj = self.object(kind, name)?;
        super::check_size(
            kind,
            &format!("memory:{}", kind.key(name)),
            obj.len() as u64,
        )?;
        Ok(obj.as_ref().clone())
    }

    fn get_range(&self, kind: ObjectKind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let obj = self.object(kind, name)?;
        let size = obj.len() as u64;
        match offset.checked_add(len).filter(|&end| end <= size) {
            Some(end) => Ok(obj[offset as usize..end as usize].to_vec()),
            None => Err(short_object(
                format!("memory:{}", kind.key(name)),
                size,
                offset,
                len,
            )),
        }
    }

    fn stat(&self, kind: ObjectKind, name: &str) -> Result<Option<u64>> {
        check_name(kind, name)?;
        Ok(self
            .read()
            .get(&(kind, name.to_string()))
            .map(|o| o.len() as u64))
    }

    fn list(&self, kind: ObjectKind) -> Result<Vec<(String, u64)>> {
        Ok(self
            .read()
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, n), o)| (n.clone(), o.len() as u64))
            .collect())
    }

    fn delete(&self, kind: ObjectKind, name: &str) -> Result<()> {
        check_name(kind, name)?;
        self.write().remove(&(kind, name.to_string()));
        Ok(())
    }
}

struct MemoryWriter {
    backend: MemoryBackend,
    kind: ObjectKind,
    buf: Vec<u8>,
}

impl Write for MemoryWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for MemoryWriter {
    fn finish(self: Box<Self>, name: &str) -> Result<u64> {
        let size = self.buf.len() as u64;
        self.backend.put(self.kind, name, &self.buf)?;
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_backend_contract() {
        super::super::contract::holds_for(&super::MemoryBackend::new());
    }
}
