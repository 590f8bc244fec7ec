//! `cairn mount`: a read-only FUSE view of the repository's snapshots.
//!
//! ```text
//! MOUNTPOINT/latest                      -> snapshots/<time of the newest snapshot>
//! MOUNTPOINT/snapshots/<time>/...        the snapshot's file tree (one entry per backed-up path)
//! MOUNTPOINT/snapshots/<time>/@streams/  its streams (database dumps), when it has any
//! MOUNTPOINT/snapshots/latest            -> <time of the newest snapshot>
//! MOUNTPOINT/instances/<name>/<time>/    the snapshots of each instance; <name>/latest -> <its newest>
//! MOUNTPOINT/ids/<snapshot id>           -> ../snapshots/<time>
//! ```
//!
//! `<time>` is the snapshot's time as recorded (RFC 3339, to the second); two snapshots of the same second
//! are told apart by their short id. The snapshot list is read once, at mount time.
//!
//! Invariants: nothing is ever written (the mount is read-only, and the kernel answers any write with
//! `EROFS`). Trees are read when a directory is first listed or looked up, and a file's chunks when its bytes
//! are read, each through the repository's one read path ([`Repository::read_tree`],
//! [`Repository::read_blob`]: decompressed and verified against its id), so a damaged chunk is an `EIO` for
//! that read, never wrong bytes. Files show the metadata the snapshot recorded (mode, owner, mtime, extended
//! attributes; hard links of one snapshot are one inode). Only the user who mounted sees the mount (no
//! `allow_other`), and that user can read the repository anyway.
//!
//! The mount holds a shared lock, so prune does not delete packs under it. It lasts until it is unmounted
//! (`fusermount3 -u`) or the process gets SIGINT or SIGTERM, which unmount it.
//!
//! fuser is used without libfuse: it mounts through the `fusermount3` binary (Debian package `fuse3`), so
//! building cairn needs no FUSE headers and only mounting needs that binary.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, ReplyXattr, Request,
};

use crate::error::{Error, Result};
use crate::hashing::Id;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::tree::{valid_name, Meta, NodeKind, Xattr};

/// The kernel may cache names and attributes this long: nothing in the view ever changes.
const TTL: Duration = Duration::from_secs(3600);
/// Decoded chunks kept for reads that continue where the last one stopped (the kernel reads 128 KiB at a
/// time; chunks are larger).
const CHUNK_CACHE: usize = 16;
/// The name of a snapshot's stream directory.
pub const STREAMS_DIR: &str = "@streams";

/// A directory's entries: name and inode.
type Listing = Arc<Vec<(Vec<u8>, u64)>>;
/// A reply's result: the value, or the errno for the kernel.
type Reply<T> = std::result::Result<T, Errno>;
/// Where each chunk of a file starts (its end last), and the chunks.
type Layout = (Arc<Vec<u64>>, Arc<Vec<Id>>);

/// What an inode is.
enum Content {
    /// A directory whose entries are fixed at mount time.
    Fixed(Vec<(Vec<u8>, u64)>),
    /// A directory of a snapshot: the entries of `tree` (none when `None`), plus `extra` (the stream
    /// directory of a snapshot's root).
    Tree {
        tree: Option<Id>,
        extra: Option<(Vec<u8>, u64)>,
    },
    File {
        size: u64,
        chunks: Arc<Vec<Id>>,
    },
    Symlink(Vec<u8>),
    Special(FileType, u64),
}

struct Inode {
    parent: u64,
    content: Content,
    meta: Meta,
    /// The snapshot directory this inode is in (hard links are grouped per snapshot).
    snapshot: u64,
}

/// Every inode handed to the kernel, and the listings of the directories read so far.
struct Table {
    inodes: Vec<Inode>,
    /// Directory -> its entries (name, inode), once listed.
    listings: HashMap<u64, Listing>,
    /// (snapshot directory, device, inode) -> our inode, for files with several links.
    links: HashMap<(u64, u64, u64), u64>,
    /// File inode -> where each chunk starts (and the file's end last), once opened.
    offsets: HashMap<u64, Arc<Vec<u64>>>,
}

impl Table {
    fn get(&self, ino: u64) -> Option<&Inode> {
        ino.checked_sub(1)
            .and_then(|i| self.inodes.get(usize::try_from(i).ok()?))
    }

    fn add(&mut self, inode: Inode) -> u64 {
        self.inodes.push(inode);
        self.inodes.len() as u64
    }
}

/// The file system handed to fuser.
pub struct SnapshotFs {
    repo: Repository,
    table: Mutex<Table>,
    chunks: Mutex<VecDeque<(Id, Arc<Vec<u8>>)>>,
    uid: u32,
    gid: u32,
    mounted_at: Meta,
}

/// The directory name of a snapshot: its time, made unique with the short id.
fn snapshot_name(snap: &Snapshot, id: &Id, taken: &mut HashMap<String, usize>) -> String {
    let time = snap.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let n = taken.entry(time.clone()).or_insert(0);
    *n += 1;
    if *n == 1 {
        time
    } else {
        format!("{time}_{}", id.short())
    }
}

impl SnapshotFs {
    /// Builds the fixed part of the view from `snapshots` (any order).
    pub fn new(repo: Repository, mut snapshots: Vec<(Id, Snapshot)>) -> SnapshotFs {
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let now = chrono::Utc::now();
        let mounted_at = Meta {
            mode: libc::S_IFDIR | 0o555,
            uid,
            gid,
            mtime: now.timestamp(),
            ..Meta::default()
        };
        let mut fs = SnapshotFs {
            repo,
            table: Mutex::new(Table {
                inodes: Vec::new(),
                listings: HashMap::new(),
                links: HashMap::new(),
                offsets: HashMap::new(),
            }),
            chunks: Mutex::new(VecDeque::new()),
            uid,
            gid,
            mounted_at,
        };
        snapshots.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        fs.build(&snapshots);
        fs
    }

    fn build(&mut self, snapshots: &[(Id, Snapshot)]) {
        let dir_meta = self.mounted_at.clone();
        let t = self.table.get_mut().unwrap_or_else(|p| p.into_inner());
        let root = t.add(Inode {
            parent: 1,
            content: Content::Fixed(Vec::new()),
            meta: dir_meta.clone(),
            snapshot: 0,
        });
        let fixed_dir = |t: &mut Table, parent: u64| {
            t.add(Inode {
                parent,
                content: Content::Fixed(Vec::new()),
                meta: dir_meta.clone(),
                snapshot: 0,
            })
        };
        let link = |t: &mut Table, parent: u64, target: String| {
            let meta = Meta {
                mode: libc::S_IFLNK | 0o777,
                ..dir_meta.clone()
            };
            t.add(Inode {
                parent,
                content: Content::Symlink(target.into_bytes()),
                meta,
                snapshot: 0,
            })
        };
        let snaps_dir = fixed_dir(t, root);
        let inst_dir = fixed_dir(t, root);
        let ids_dir = fixed_dir(t, root);
        let mut taken = HashMap::new();
        let mut by_time = Vec::new();
        let mut instances: std::collections::BTreeMap<Vec<u8>, Vec<(String, &Snapshot)>> =
            Default::default();
        let mut ids = Vec::new();
        for (id, snap) in snapshots {
            let name = snapshot_name(snap, id, &mut taken);
            let ino = snapshot_dir(t, snaps_dir, snap);
            by_time.push((name.clone().into_bytes(), ino));
            let l = link(t, ids_dir, format!("../snapshots/{name}"));
            ids.push((id.to_hex().into_bytes(), l));
            if let Some(i) = snap.instance.as_ref().filter(|i| valid_name(i.as_bytes())) {
                instances
                    .entry(i.as_bytes().to_vec())
                    .or_default()
                    .push((name, snap));
            }
        }
        let newest = by_time
            .last()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned());
        let mut top = vec![
            (b"ids".to_vec(), ids_dir),
            (b"instances".to_vec(), inst_dir),
            (b"snapshots".to_vec(), snaps_dir),
        ];
        if let Some(n) = &newest {
            by_time.push((b"latest".to_vec(), link(t, snaps_dir, n.clone())));
            top.insert(
                1,
                (b"latest".to_vec(), link(t, root, format!("snapshots/{n}"))),
            );
        }
        let mut per_instance = Vec::new();
        for (name, snaps) in instances {
            let dir = fixed_dir(t, inst_dir);
            let mut entries = Vec::new();
            for (time, snap) in &snaps {
                entries.push((time.clone().into_bytes(), snapshot_dir(t, dir, snap)));
            }
            if let Some((time, _)) = snaps.last() {
                entries.push((b"latest".to_vec(), link(t, dir, time.clone())));
            }
            set_fixed(t, dir, entries);
            per_instance.push((name, dir));
        }
        set_fixed(t, root, top);
        set_fixed(t, snaps_dir, by_time);
        set_fixed(t, inst_dir, per_instance);
        set_fixed(t, ids_dir, ids);
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entries of directory `ino`, reading its tree the first time.
    fn listing(&self, ino: u64) -> Reply<Listing> {
        let mut t = self.table();
        if let Some(l) = t.listings.get(&ino) {
            return Ok(l.clone());
        }
        let inode = t.get(ino).ok_or(Errno::ENOENT)?;
        let snapshot = inode.snapshot;
        let (tree, extra) = match &inode.content {
            Content::Fixed(entries) => return Ok(Arc::new(entries.clone())),
            Content::Tree { tree, extra } => (*tree, extra.clone()),
            _ => return Err(Errno::ENOTDIR),
        };
        let nodes = match tree {
            Some(id) => self.repo.read_tree(&id).map_err(|e| errno(&e))?.nodes,
            None => Vec::new(),
        };
        let mut entries = Vec::with_capacity(nodes.len() + 1);
        for node in nodes {
            let name = node.name.clone();
            let child = node_inode(&mut t, ino, snapshot, node);
            entries.push((name, child));
        }
        if let Some(extra) = extra.filter(|(n, _)| !entries.iter().any(|(m, _)| m == n)) {
            entries.push(extra);
        }
        let entries = Arc::new(entries);
        t.listings.insert(ino, entries.clone());
        Ok(entries)
    }

    fn attr(&self, ino: u64) -> Reply<FileAttr> {
        let t = self.table();
        let inode = t.get(ino).ok_or(Errno::ENOENT)?;
        let m = &inode.meta;
        let (kind, size, rdev) = match &inode.content {
            Content::Fixed(_) | Content::Tree { .. } => (FileType::Directory, 0, 0),
            Content::File { size, .. } => (FileType::RegularFile, *size, 0),
            Content::Symlink(target) => (FileType::Symlink, target.len() as u64, 0),
            Content::Special(kind, rdev) => (*kind, 0, *rdev),
        };
        let mtime = system_time(m.mtime, m.mtime_nsec);
        let ctime = system_time(m.ctime, m.ctime_nsec);
        let (uid, gid) = match &inode.content {
            Content::Fixed(_) | Content::Symlink(_) if inode.snapshot == 0 => (self.uid, self.gid),
            _ => (m.uid, m.gid),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime,
            crtime: mtime,
            kind,
            perm: (m.mode & 0o7777) as u16,
            nlink: if kind == FileType::Directory {
                2
            } else {
                u32::try_from(m.nlink.max(1)).unwrap_or(u32::MAX)
            },
            uid,
            gid,
            rdev: rdev as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    /// Where each chunk of file `ino` starts, and its end last (chunk sizes come from the index).
    fn offsets(&self, ino: u64) -> Reply<Layout> {
        let (chunks, size, known) = {
            let t = self.table();
            let inode = t.get(ino).ok_or(Errno::ENOENT)?;
            let Content::File { chunks, size } = &inode.content else {
                return Err(Errno::EISDIR);
            };
            (chunks.clone(), *size, t.offsets.get(&ino).cloned())
        };
        if let Some(o) = known {
            return Ok((o, chunks));
        }
        let mut offsets = Vec::with_capacity(chunks.len() + 1);
        let mut at = 0u64;
        for c in chunks.iter() {
            offsets.push(at);
            let loc = self.repo.locate(c).map_err(|e| errno(&e))?;
            at += u64::from(loc.entry.raw_len);
        }
        offsets.push(at);
        if at != size {
            eprintln!("cairn: mount: file inode {ino}: its chunks hold {at} bytes, the tree records {size}");
            return Err(Errno::EIO);
        }
        let offsets = Arc::new(offsets);
        self.table().offsets.insert(ino, offsets.clone());
        Ok((offsets, chunks))
    }

    /// A chunk's bytes, verified (from the cache of recent chunks, else read).
    fn chunk(&self, id: &Id) -> Reply<Arc<Vec<u8>>> {
        let lock = || self.chunks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, data)) = lock().iter().find(|(c, _)| c == id) {
            return Ok(data.clone());
        }
        let data = Arc::new(self.repo.read_blob(id).map_err(|e| errno(&e))?);
        let mut cache = lock();
        if cache.len() >= CHUNK_CACHE {
            cache.pop_front();
        }
        cache.push_back((*id, data.clone()));
        Ok(data)
    }

    fn read_range(&self, ino: u64, offset: u64, size: u32) -> Reply<Vec<u8>> {
        let (offsets, chunks) = self.offsets(ino)?;
        let end_of_file = offsets.last().copied().unwrap_or(0);
        let end = offset.saturating_add(u64::from(size)).min(end_of_file);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        // The chunk holding `offset`: the last one starting at or before it.
        let mut i = offsets
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        while i < chunks.len() && offsets[i] < end {
            let data = self.chunk(&chunks[i])?;
            let from = offset.max(offsets[i]) - offsets[i];
            let to = end.min(offsets[i + 1]) - offsets[i];
            let part = data.get(from as usize..to as usize).ok_or(Errno::EIO)?;
            out.extend_from_slice(part);
            i += 1;
        }
        Ok(out)
    }

    fn xattrs(&self, ino: u64) -> Reply<Vec<Xattr>> {
        let t = self.table();
        Ok(t.get(ino).ok_or(Errno::ENOENT)?.meta.xattrs.clone())
    }
}

/// Sets the entries of a fixed directory.
fn set_fixed(t: &mut Table, dir: u64, entries: Vec<(Vec<u8>, u64)>) {
    if let Some(inode) = dir
        .checked_sub(1)
        .and_then(|i| t.inodes.get_mut(i as usize))
    {
        inode.content = Content::Fixed(entries);
    }
}

/// The root directory of a snapshot (and its stream directory), below `parent`.
fn snapshot_dir(t: &mut Table, parent: u64, snap: &Snapshot) -> u64 {
    let meta = Meta {
        mode: libc::S_IFDIR | 0o555,
        mtime: snap.time.timestamp(),
        ctime: snap.time.timestamp(),
        ..Meta::default()
    };
    let ino = t.add(Inode {
        parent,
        content: Content::Tree {
            tree: snap.tree,
            extra: None,
        },
        meta: meta.clone(),
        snapshot: 0,
    });
    t.inodes[ino as usize - 1].snapshot = ino;
    if let Some(streams) = snap.stream_tree {
        let s = t.add(Inode {
            parent: ino,
            content: Content::Tree {
                tree: Some(streams),
                extra: None,
            },
            meta,
            snapshot: ino,
        });
        t.inodes[ino as usize - 1].content = Content::Tree {
            tree: snap.tree,
            extra: Some((STREAMS_DIR.as_bytes().to_vec(), s)),
        };
    }
    ino
}

/// The inode of a tree entry; the links of a hard-linked file within one snapshot share one.
fn node_inode(t: &mut Table, parent: u64, snapshot: u64, node: crate::tree::Node) -> u64 {
    let key = (snapshot, node.meta.device, node.meta.inode);
    let linked = matches!(node.kind, NodeKind::File { .. }) && node.meta.nlink > 1;
    if linked {
        if let Some(&ino) = t.links.get(&key) {
            return ino;
        }
    }
    let content = match node.kind {
        NodeKind::File { size, chunks } => Content::File {
            size,
            chunks: Arc::new(chunks),
        },
        NodeKind::Dir { subtree } => Content::Tree {
            tree: Some(subtree),
            extra: None,
        },
        NodeKind::Symlink { target } => Content::Symlink(target),
        NodeKind::Fifo => Content::Special(FileType::NamedPipe, 0),
        NodeKind::CharDevice { rdev } => Content::Special(FileType::CharDevice, rdev),
        NodeKind::BlockDevice { rdev } => Content::Special(FileType::BlockDevice, rdev),
    };
    let ino = t.add(Inode {
        parent,
        content,
        meta: node.meta,
        snapshot,
    });
    if linked {
        t.links.insert(key, ino);
    }
    ino
}

/// A recorded time; one the system cannot represent (hostile or absurd) shows as the epoch.
fn system_time(sec: i64, nsec: u32) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(nsec.min(999_999_999)));
    let secs = Duration::from_secs(sec.unsigned_abs());
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(secs)
    } else {
        UNIX_EPOCH.checked_sub(secs)
    };
    t.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

/// The errno for a failed read: the OS error if there is one, else `EIO` (damage included). Damage is also
/// printed, since a reader of the mount sees only the errno.
fn errno(e: &Error) -> Errno {
    eprintln!("cairn: mount: {e}");
    match e {
        Error::Io { source, .. } => source.raw_os_error().map_or(Errno::EIO, Errno::from_i32),
        _ => Errno::EIO,
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.listing(parent.0).and_then(|entries| {
            entries
                .iter()
                .find(|(n, _)| n.as_slice() == name.as_bytes())
                .map(|(_, ino)| *ino)
                .ok_or(Errno::ENOENT)
        });
        match found.and_then(|ino| self.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let t = self.table();
        match t.get(ino.0).map(|i| &i.content) {
            Some(Content::Symlink(target)) => reply.data(target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.offsets(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_range(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.listing(ino.0) {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let parent = self.table().get(ino.0).map_or(1, |i| i.parent);
        let dots = [(b".".to_vec(), ino.0), (b"..".to_vec(), parent)];
        let all = dots.iter().chain(entries.iter());
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            let kind = match self.attr(*child) {
                Ok(a) => a.kind,
                Err(e) => return reply.error(e),
            };
            if reply.add(INodeNo(*child), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let xattrs = match self.xattrs(ino.0) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        match xattrs.iter().find(|x| x.name == name.as_bytes()) {
            None => reply.error(Errno::NO_XATTR),
            Some(x) => xattr_reply(reply, &x.value, size),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let xattrs = match self.xattrs(ino.0) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let mut names = Vec::new();
        for x in &xattrs {
            names.extend_from_slice(&x.name);
            names.push(0);
        }
        xattr_reply(reply, &names, size);
    }
}

/// The size of `data` when asked for it (`size` 0), else the data if it fits.
fn xattr_reply(reply: ReplyXattr, data: &[u8], size: u32) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len <= size {
        reply.data(data);
    } else {
        reply.error(Errno::ERANGE);
    }
}

/// Set by SIGINT or SIGTERM while mounted.
static STOP: AtomicBool = AtomicBool::new(false);

fn install_stop_signals() -> Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the action only stores to an atomic, which is async-signal-safe.
        unsafe { signal_hook_registry::register(sig, || STOP.store(true, Ordering::SeqCst)) }
            .map_err(|e| Error::Command(format!("installing the signal handlers: {e}")))?;
    }
    Ok(())
}

/// Mounts the snapshots of `repo` at `mountpoint` and serves them until the file system is unmounted, or
/// SIGINT/SIGTERM arrives (then unmounts it). `ready` is called once the mount is in place.
pub fn mount(repo: Repository, mountpoint: &Path, ready: impl FnOnce()) -> Result<()> {
    let lock = crate::lock::acquire_reader(repo.backend(), "mount")?;
    if let Some(lock) = &lock {
        // Mounts last for hours: a lock lost meanwhile makes reads report it instead of damage.
        repo.watch_lock(lock);
    }
    let snapshots = repo.snapshots()?;
    let fs = SnapshotFs::new(repo, snapshots);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::FSName("cairn".into()),
        MountOption::Subtype("cairn".into()),
    ];
    install_stop_signals()?;
    let mount_error = |e: std::io::Error| {
        Error::Command(format!(
            "cannot mount at {}: {e} (mounting needs /dev/fuse and the fusermount3 program, Debian package fuse3)",
            mountpoint.display()
        ))
    };
    let mut session = fuser::Session::new(fs, mountpoint, &config).map_err(mount_error)?;
    let mut unmounter = session.unmount_callable();
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let serve = std::thread::Builder::new()
        .name("cairn-mount".into())
        .spawn(move || {
            let r = session.run();
            let _ = done_tx.send(());
            r
        })
        .map_err(|e| Error::Command(format!("cannot start the mount thread: {e}")))?;
    ready();
    let mut unmounting = false;
    // The serving thread ends when the file system is unmounted, from here or from outside.
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
        done.recv_timeout(Duration::from_millis(100))
    {
        if STOP.load(Ordering::SeqCst) && !unmounting {
            unmounting = true;
            unmounter.unmount().map_err(|e| {
                Error::Command(format!("cannot unmount {}: {e}", mountpoint.display()))
            })?;
        }
    }
    serve
        .join()
        .map_err(|_| Error::Command("the mount thread panicked".into()))?
        .map_err(|e| Error::Command(format!("serving the mount: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_times_never_panic_and_keep_nanoseconds() {
        assert_eq!(
            system_time(1, 5),
            UNIX_EPOCH + Duration::from_secs(1) + Duration::from_nanos(5)
        );
        assert_eq!(system_time(-1, 0), UNIX_EPOCH - Duration::from_secs(1));
        for s in [i64::MIN, i64::MAX] {
            let _ = system_time(s, u32::MAX);
        }
    }
}
