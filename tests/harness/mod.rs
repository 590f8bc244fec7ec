//! Helpers shared by the integration tests: running the real `cairn` binary, building source trees with every
//! kind of entry, and comparing trees byte for byte including metadata.
#![allow(dead_code)]

pub mod pg;
pub mod proxy;
pub mod store;

pub use store::*;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
pub fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

/// The password every command of the suite gets: `cairn init` encrypts by default, so the whole suite
/// runs on encrypted repositories.
pub const PASSWORD: &str = "correct horse battery staple";

/// Gives `c` the suite's password (and cheap Argon2id parameters for the keys it creates, so hundreds of
/// commands do not each spend 0.2 s deriving a key), and an index cache outside any tree a test backs up.
pub fn with_password(c: &mut Command) -> &mut Command {
    c.env("CAIRN_PASSWORD", PASSWORD)
        .env("CAIRN_KDF_MEMORY_KIB", "1024")
        .env("CAIRN_KDF_ITERATIONS", "1")
        .env_remove("CAIRN_PASSWORD_FILE")
        .env_remove("CAIRN_PASSWORD_COMMAND");
    if std::env::var_os("XDG_CACHE_HOME").is_none() {
        c.env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("cairn-test-cache"),
        );
    }
    c
}

/// Opens the repository at `path` in this process, with the suite's password and index cache (the ones
/// [`with_password`] gives the binary), so both see the same cache.
pub fn open_repo(path: &Path) -> cairn::Repository {
    static ENV: std::sync::Once = std::sync::Once::new();
    ENV.call_once(|| {
        std::env::set_var("CAIRN_PASSWORD", PASSWORD);
        if std::env::var_os("XDG_CACHE_HOME").is_none() {
            std::env::set_var(
                "XDG_CACHE_HOME",
                std::env::temp_dir().join("cairn-test-cache"),
            );
        }
    });
    cairn::Repository::open(path).unwrap()
}

/// A `cairn` command bound to a repository (a directory, or an S3 URL from [`repo_in`]).
pub fn cairn(repo: &Path) -> Command {
    let mut c = Command::new(cairn_bin());
    c.env("CAIRN_REPO", repo)
        .env_remove("XDG_DATA_HOME")
        .stdin(Stdio::null());
    with_password(&mut c);
    // After the password's defaults: an S3 repository's own cache directory wins.
    if is_s3(repo) {
        s3_env(&mut c, repo.to_str().unwrap());
    }
    c
}

/// `cairn` on `repo` as the unprivileged user `nobody` (root ignores file modes), with the test password
/// and `cache` as its cache directory.
pub fn cairn_as_nobody(repo: &Path, cache: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        cairn_bin(),
    ])
    .env("CAIRN_REPO", repo)
    .env_remove("XDG_DATA_HOME");
    with_password(&mut c).env("XDG_CACHE_HOME", cache);
    c
}

/// [`cairn_as_nobody`] running `args` on `repo`, with its cache in `dir/nobody-cache`.
pub fn cairn_as_nobody_in(dir: &Path, repo: &Path, args: &[&str]) -> Command {
    let mut c = cairn_as_nobody(repo, &dir.join("nobody-cache"));
    c.args(args);
    c
}

/// Runs and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run cairn");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Runs and asserts success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let (code, out, err) = run(cmd);
    assert_eq!(
        code, 0,
        "command failed: {cmd:?}\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// Runs a command expecting a clean failure: the given exit code, one `cairn: error:` line, no panic.
pub fn fails(cmd: &mut Command, code: i32) -> String {
    let (got, out, err) = run(cmd);
    assert_eq!(got, code, "{cmd:?}\nstdout: {out}\nstderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains("cairn: error:"), "no clear error line: {err}");
    err
}

/// Initialises a repository (local or S3: see [`repo_in`]) for a fresh temp dir.
pub fn new_repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_in(dir.path());
    ok(cairn(&repo).arg("init"));
    (dir, repo)
}

/// Initialises a plaintext repository (`--insecure-no-encryption`) in a fresh temp dir: for tests that find
/// and change stored bytes by their content (tests/encryption.rs covers damage to encrypted objects).
pub fn new_plaintext_repo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    ok(cairn(&repo).args(["init", "--insecure-no-encryption"]));
    (dir, repo)
}

/// Backs up `paths` with `--json`; returns the parsed output.
pub fn backup_json(repo: &Path, args: &[&str]) -> serde_json::Value {
    let out = ok(cairn(repo).args(["backup", "--json"]).args(args));
    serde_json::from_str(&out).unwrap()
}

/// `cairn backup --stdin-from-command --stdin-name NAME -- COMMAND...`: a snapshot of one stream, what
/// `command` prints.
pub fn stdin_backup(repo: &Path, name: &str, command: &[&str]) -> Command {
    let mut c = cairn(repo);
    c.args(["backup", "--stdin-from-command", "--stdin-name", name, "--"])
        .args(command);
    c
}

/// Deterministic pseudo-random bytes.
/// The system identifier of the clusters [`wal_segment`] makes segments of.
pub const TEST_SYSID: u64 = 7_123_456_789_012_345_678;

/// A file `wal-push` takes for the segment `name` (24 hex digits, perhaps `.partial`) of the cluster
/// `sysid`: `len` pseudo-random bytes behind the first page header PostgreSQL writes (xlog_internal.h's
/// XLogLongPageHeaderData in this host's byte order), with the smallest segment size that holds `len`.
pub fn wal_segment(name: &str, len: usize, seed: u64, sysid: u64) -> Vec<u8> {
    let seg_size = (len.next_power_of_two() as u64).max(1 << 20);
    let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).unwrap();
    let (tli, log, seg) = (hex(0..8), hex(8..16), hex(16..24));
    let mut v = pseudo_random(len.max(40), seed);
    v[0..2].copy_from_slice(&0xD116u16.to_ne_bytes());
    v[2..4].copy_from_slice(&0x0002u16.to_ne_bytes()); // XLP_LONG_HEADER
    v[4..8].copy_from_slice(&(tli as u32).to_ne_bytes());
    v[8..16].copy_from_slice(&((log << 32) + seg * seg_size).to_ne_bytes());
    v[16..24].fill(0);
    v[24..32].copy_from_slice(&sysid.to_ne_bytes());
    v[32..36].copy_from_slice(&(seg_size as u32).to_ne_bytes());
    v[36..40].copy_from_slice(&8192u32.to_ne_bytes());
    v.truncate(len);
    v
}

pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Builds a tree with every kind of entry cairn records, plus `n_files` small real files.
pub fn build_rich_tree(root: &Path, n_files: usize) {
    fs::create_dir_all(root.join("docs/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("docs/readme.txt"), b"hello cairn\n".repeat(100)).unwrap();
    fs::write(
        root.join("docs/nested/deeper/big.bin"),
        pseudo_random(5_000_000, 1),
    )
    .unwrap();
    fs::write(
        root.join("compressible.txt"),
        b"the same line again and again\n".repeat(50_000),
    )
    .unwrap();
    fs::write(root.join("empty-file"), b"").unwrap();
    symlink("docs/readme.txt", root.join("link-rel")).unwrap();
    symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    fs::hard_link(
        root.join("docs/readme.txt"),
        root.join("hardlink-to-readme"),
    )
    .unwrap();
    let weird = OsStr::from_bytes(b"not-utf8-\xff\xfe.txt");
    fs::write(root.join(weird), b"bytes of a strange name").unwrap();
    fs::write(root.join("spaces and\nnewline"), b"x").unwrap();
    let exec = root.join("script.sh");
    fs::write(&exec, b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(&exec, fs::Permissions::from_mode(0o750)).unwrap();
    let setgid = root.join("docs/private");
    fs::write(&setgid, b"secret").unwrap();
    fs::set_permissions(&setgid, fs::Permissions::from_mode(0o2600)).unwrap();
    let c = std::ffi::CString::new(root.join("a-fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
    if unsafe { libc::geteuid() } == 0 {
        // A character device like /dev/null (1, 3): recreated only when restoring as root.
        let dev =
            std::ffi::CString::new(root.join("a-char-device").as_os_str().as_bytes()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) },
            0
        );
    }
    for i in 0..n_files {
        let dir = root.join(format!("store/{:02x}", i % 64));
        fs::create_dir_all(&dir).unwrap();
        let len = 100 + (i * 7919) % 20_000;
        let data = if i % 2 == 0 {
            pseudo_random(len, i as u64 + 10)
        } else {
            format!("text file {i}\n").repeat(len / 12).into_bytes()
        };
        fs::write(dir.join(format!("file-{i:05}")), data).unwrap();
    }
    // Nanosecond mtimes that a restore must reproduce exactly.
    set_mtime(&root.join("docs/readme.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("empty-dir"), 1_500_000_000, 987_654_321);
}

pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                [t, t].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0
    );
}

/// Everything a restore must reproduce about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub content: Vec<u8>,
    /// For hard links: the other paths sharing the inode (relative), sorted.
    pub link_group: Vec<PathBuf>,
    /// Extended attributes (ACLs included), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The extended attributes of `path` (not following symlinks), sorted.
pub fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<_> = xattr::list(path)
        .map(|names| {
            names
                .filter_map(|n| {
                    let value = xattr::get(path, &n).ok()??;
                    Some((n.as_bytes().to_vec(), value))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file under `root` by its path relative to `root`, with its bytes.
pub fn files_under(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = fs::read(&p).unwrap();
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

/// Walks a tree into a map of relative path -> Entry (directory mtimes included).
pub fn snapshot_tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    // Sorted, as documented: the order of a directory listing is the file system's own.
    for group in inodes.values_mut() {
        group.sort();
    }
    for group in inodes.values().filter(|g| g.len() > 1) {
        for p in group {
            out.get_mut(p).unwrap().link_group = group.clone();
        }
    }
    out
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<PathBuf, Entry>,
    inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
) {
    for e in fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let md = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        let ft = md.file_type();
        let (kind, content) = if ft.is_dir() {
            walk(root, &path, out, inodes);
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if ft.is_file() {
            inodes.entry(md.ino()).or_default().push(rel.clone());
            ("file", fs::read(&path).unwrap())
        } else {
            ("special", md.rdev().to_le_bytes().to_vec())
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                content,
                link_group: Vec::new(),
                xattrs: xattrs_of(&path),
            },
        );
    }
}

/// Asserts two trees are identical in content and metadata, naming the first difference.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (snapshot_tree(a), snapshot_tree(b));
    let ka: Vec<_> = ta.keys().collect();
    let kb: Vec<_> = tb.keys().collect();
    assert_eq!(ka, kb, "different entries");
    for (p, ea) in &ta {
        let eb = &tb[p];
        assert_eq!(ea.kind, eb.kind, "{p:?} kind");
        assert_eq!(ea.mode, eb.mode, "{p:?} mode");
        assert_eq!((ea.uid, ea.gid), (eb.uid, eb.gid), "{p:?} owner");
        assert_eq!(ea.mtime, eb.mtime, "{p:?} mtime");
        assert!(ea.content == eb.content, "{p:?} content differs");
        assert_eq!(ea.link_group, eb.link_group, "{p:?} hard links");
        assert_eq!(ea.xattrs, eb.xattrs, "{p:?} extended attributes");
    }
}

/// Every pack of a repository (files, or S3 objects: see [`obj_read`]), sorted.
pub fn packs(repo: &Path) -> Vec<PathBuf> {
    obj_list(&repo.join("packs"))
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// Sets the repository's pack target size (tests use small packs to get many).
pub fn set_pack_size(repo: &Path, bytes: u64) {
    edit_config(repo, |cfg| {
        cfg["pack_target_size"] = serde_json::json!(bytes)
    });
}

/// A repository with 1 MiB packs and two files each in a pack of its own: the first snapshot holds
/// `victim.bin`, the second both it and `survivor.bin`, so damage to the victim's pack hits exactly one file.
/// Returns (temp dir, repository, source, the victim's pack).
pub fn two_pack_repo() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let (dir, repo) = new_repo();
    set_pack_size(&repo, 1024 * 1024);
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("victim.bin"), pseudo_random(1_200_000, 1)).unwrap();
    ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    let victim_pack = obj_list(&repo.join("packs"))
        .into_iter()
        .max_by_key(|(_, len)| *len)
        .unwrap()
        .0;
    fs::write(src.join("survivor.bin"), pseudo_random(1_200_000, 2)).unwrap();
    ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    (dir, repo, src, victim_pack)
}

/// Starts `prune --max-unused 0` on `repo`, kills it with SIGKILL after `delay_ms`, removes the lock it left
/// and asserts that `check` still passes: what a prune killed at any point must leave behind.
pub fn kill_prune_then_check(repo: &Path, delay_ms: u64) {
    let mut child = cairn(repo)
        .args(["prune", "--quiet", "--max-unused", "0"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let _ = child.kill();
    let _ = child.wait();
    ok(cairn(repo).arg("unlock"));
    let (code, out, err) = run(cairn(repo).arg("check"));
    assert_eq!(
        code, 0,
        "check after prune killed at {delay_ms} ms:\n{out}\n{err}"
    );
}
