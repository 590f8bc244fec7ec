//! Hardening of restore against a target tree that someone else changes: symlinks planted before the restore,
//! and directories swapped for symlinks while it runs (an in-place restore, as root, of a tree its service
//! user can write). Nothing outside the target may be created, unlinked, written, chowned or chmodded.
//!
//! The swap is made deterministically, from the restore's own progress observer: its `cancelled` check runs
//! after the directories are made and before the first file is created, which is exactly the window a
//! concurrent writer can use.

mod harness;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cairn::progress::{Observer, Progress};
use cairn::restore::{restore, RestoreOptions};
use harness::*;

/// Runs `swap` once, at the restore's first cancellation check.
struct SwapAtFirstCheck {
    done: AtomicBool,
    swap: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Observer for SwapAtFirstCheck {
    fn cancelled(&self) -> bool {
        if !self.done.swap(true, Ordering::SeqCst) {
            if let Some(f) = self.swap.lock().unwrap().take() {
                f();
            }
        }
        false
    }
}

/// Replaces the directory `dir` by a symlink to `to` (the old directory is moved aside, as a writer of the
/// parent can do at any time).
fn swap_for_symlink(dir: &Path, to: &Path) {
    let aside = dir.with_extension("moved-aside");
    fs::rename(dir, &aside).unwrap();
    symlink(to, dir).unwrap();
}

/// Everything below `dir`: (relative path, mode, uid, content or link target).
fn listing(dir: &Path) -> Vec<(PathBuf, u32, u32, Vec<u8>)> {
    snapshot_tree(dir)
        .into_iter()
        .map(|(p, e)| (p, e.mode, e.uid, e.content))
        .collect()
}

/// A source tree with files in two directories, an empty directory, a symlink and a FIFO in the second.
fn source(root: &Path) -> PathBuf {
    let src = root.join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::create_dir_all(src.join("b")).unwrap();
    fs::create_dir_all(src.join("e")).unwrap();
    fs::write(src.join("a/x"), pseudo_random(300_000, 1)).unwrap();
    fs::write(src.join("b/y"), b"from the snapshot").unwrap();
    symlink("y", src.join("b/link")).unwrap();
    let fifo = std::ffi::CString::new(src.join("b/fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    fs::set_permissions(src.join("e"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(src.join("b"), fs::Permissions::from_mode(0o777)).unwrap();
    src
}

fn restore_with(
    repo: &cairn::Repository,
    target: &Path,
    overwrite: bool,
    swap: impl FnOnce() + Send + 'static,
) -> cairn::Result<cairn::restore::RestoreSummary> {
    let (_, snap) = repo.resolve_snapshot("latest", None).unwrap();
    let observer = Arc::new(SwapAtFirstCheck {
        done: AtomicBool::new(false),
        swap: Mutex::new(Some(Box::new(swap))),
    });
    restore(
        repo,
        &snap,
        &RestoreOptions {
            target: target.to_path_buf(),
            include: Vec::new(),
            overwrite,
            sparse: false,
            progress: Progress::observed(observer),
        },
    )
}

/// A repository holding a backup of [`source`], opened in this process, and a directory outside any
/// restore target holding `y` ("precious"), a name the snapshot has too.
fn backed_up_with_outside() -> (tempfile::TempDir, PathBuf, cairn::Repository, PathBuf) {
    let (dir, repo) = new_repo();
    let src = source(dir.path());
    ok(cairn(&repo).args(["backup", src.to_str().unwrap()]));
    let repo = open_repo(&repo);
    let outside = dir.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("y"), b"precious").unwrap();
    (dir, src, repo, outside)
}

#[test]
fn a_directory_swapped_for_a_symlink_during_restore_never_leads_it_outside_the_target() {
    if local_only("restores through the library in this process") {
        return;
    }
    // Outside the target: a directory holding a file of the name the snapshot has in `b`, and a private
    // file that the empty directory `e` is swapped for.
    let (dir, src, repo, outside) = backed_up_with_outside();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"secret").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let victim_before = fs::metadata(&victim).unwrap();
    let outside_before = listing(&outside);

    // `b` holds files (created through it unless it is opened without following), `e` is empty (only its
    // metadata is applied, at the end).
    for (swapped, to) in [("b", outside.clone()), ("e", victim.clone())] {
        for overwrite in [false, true] {
            let target = dir.path().join(format!("target-{swapped}-{overwrite}"));
            let (t, to) = (target.clone(), to.clone());
            let r = restore_with(&repo, &target, overwrite, move || {
                swap_for_symlink(&t.join("src").join(swapped), &to);
            });
            let e = r.expect_err("a restore through a swapped directory must fail");
            assert!(
                e.to_string().contains(&format!("src/{swapped}")),
                "the error names the swapped directory: {e}"
            );
            assert_eq!(
                listing(&outside),
                outside_before,
                "{swapped}, overwrite={overwrite}: nothing outside the target is created, replaced or written"
            );
            let after = fs::metadata(&victim).unwrap();
            assert_eq!(
                (after.mode(), after.uid(), after.gid(), after.mtime()),
                (
                    victim_before.mode(),
                    victim_before.uid(),
                    victim_before.gid(),
                    victim_before.mtime()
                ),
                "{swapped}, overwrite={overwrite}: the file a directory was swapped for keeps its owner, mode and times"
            );
            assert_eq!(fs::read(&victim).unwrap(), b"secret");
            // What the restore did write is exact: the untouched directory's file.
            assert!(
                fs::read(target.join("src/a/x")).unwrap() == fs::read(src.join("a/x")).unwrap()
            );
        }
    }

    // Without interference the same restore is complete and exact.
    let clean = dir.path().join("clean");
    restore_with(&repo, &clean, false, || {}).unwrap();
    assert_same_tree(&src, &clean.join("src"));
}

#[test]
fn symlinks_planted_in_the_target_are_replaced_or_refused_never_followed() {
    if local_only("restores through the library in this process") {
        return;
    }
    let (dir, src, repo, outside) = backed_up_with_outside();
    fs::write(outside.join("x"), b"precious too").unwrap();
    let outside_before = listing(&outside);

    // Planted before the restore: a symlink where the snapshot has a directory, and where it has a file.
    let plant = |target: &Path| {
        fs::create_dir_all(target.join("src/a")).unwrap();
        symlink(&outside, target.join("src/b")).unwrap();
        symlink(outside.join("x"), target.join("src/a/x")).unwrap();
    };
    let refused = dir.path().join("refused");
    plant(&refused);
    let e = restore_with(&repo, &refused, false, || {}).expect_err("refused without --overwrite");
    assert!(matches!(e, cairn::Error::Exists(_)), "{e}");
    assert_eq!(listing(&outside), outside_before);

    let replaced = dir.path().join("replaced");
    plant(&replaced);
    restore_with(&repo, &replaced, true, || {}).unwrap();
    assert_eq!(
        listing(&outside),
        outside_before,
        "the planted links were not followed"
    );
    assert_same_tree(&src, &replaced.join("src"));
}

/// The local backend, with a hook run at the `at`-th read of pack data after it is armed: the moment a
/// walk of the snapshot reads a subtree, between looking at a directory on disk and entering it.
struct HookedBackend {
    inner: cairn::backend::SharedBackend,
    reads: std::sync::atomic::AtomicU64,
    at: std::sync::atomic::AtomicU64,
    hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl HookedBackend {
    fn arm(&self, at: u64, hook: impl FnOnce() + Send + 'static) {
        *self.hook.lock().unwrap() = Some(Box::new(hook));
        self.reads.store(0, Ordering::SeqCst);
        self.at.store(at, Ordering::SeqCst);
    }

    fn read(&self, kind: cairn::backend::ObjectKind) {
        if kind == cairn::backend::ObjectKind::Pack
            && self.reads.fetch_add(1, Ordering::SeqCst) + 1 == self.at.load(Ordering::SeqCst)
        {
            if let Some(f) = self.hook.lock().unwrap().take() {
                f();
            }
        }
    }
}

impl cairn::backend::Backend for HookedBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn put(&self, kind: cairn::backend::ObjectKind, name: &str, data: &[u8]) -> cairn::Result<()> {
        self.inner.put(kind, name, data)
    }
    fn put_new(
        &self,
        kind: cairn::backend::ObjectKind,
        name: &str,
        data: &[u8],
    ) -> cairn::Result<bool> {
        self.inner.put_new(kind, name, data)
    }
    fn writer(
        &self,
        kind: cairn::backend::ObjectKind,
    ) -> cairn::Result<Box<dyn cairn::backend::ObjectWriter>> {
        self.inner.writer(kind)
    }
    fn get(&self, kind: cairn::backend::ObjectKind, name: &str) -> cairn::Result<Vec<u8>> {
        self.read(kind);
        self.inner.get(kind, name)
    }
    fn get_range(
        &self,
        kind: cairn::backend::ObjectKind,
        name: &str,
        offset: u64,
        len: u64,
    ) -> cairn::Result<Vec<u8>> {
        self.read(kind);
        self.inner.get_range(kind, name, offset, len)
    }
    fn stat(&self, kind: cairn::backend::ObjectKind, name: &str) -> cairn::Result<Option<u64>> {
        self.inner.stat(kind, name)
    }
    fn list(&self, kind: cairn::backend::ObjectKind) -> cairn::Result<Vec<(String, u64)>> {
        self.inner.list(kind)
    }
    fn delete(&self, kind: cairn::backend::ObjectKind, name: &str) -> cairn::Result<()> {
        self.inner.delete(kind, name)
    }
}

#[test]
fn restore_delete_never_enters_a_directory_swapped_for_a_symlink_during_its_walk() {
    if local_only("opens the repository's directory through a hooked local backend") {
        return;
    }
    let (dir, repo_path) = new_repo();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/k"), b"kept").unwrap();
    ok(cairn(&repo_path).args(["backup", src.to_str().unwrap()]));
    open_repo(&repo_path); // the suite's password and cache settings for this process
    let hooked = Arc::new(HookedBackend {
        inner: Arc::new(cairn::backend::local::LocalBackend::new(&repo_path)),
        reads: Default::default(),
        at: Default::default(),
        hook: Mutex::new(None),
    });
    let repo = cairn::Repository::open_with(hooked.clone()).unwrap();
    let (_, snap) = repo.resolve_snapshot("latest", None).unwrap();
    let root = snap.tree.unwrap();

    // The restored tree, plus a file the snapshot lacks (which --delete removes).
    let dest = dir.path().join("dest");
    fs::create_dir_all(dest.join("src/sub")).unwrap();
    fs::write(dest.join("src/sub/k"), b"kept").unwrap();
    fs::write(dest.join("src/added"), b"not in the snapshot").unwrap();
    // Outside: a directory whose entries the snapshot's `src` does not have.
    let outside = dir.path().join("outside");
    fs::create_dir_all(outside.join("sub")).unwrap();
    fs::write(outside.join("precious"), b"precious").unwrap();
    let outside_before = listing(&outside);

    // The walk reads the root tree (1st read), looks at `dest/src` (a real directory), reads its tree (2nd
    // read) and enters it: `dest/src` becomes a symlink to `outside` in between.
    let d = dest.clone();
    let o = outside.clone();
    hooked.arm(2, move || swap_for_symlink(&d.join("src"), &o));
    let r = cairn::delete_absent::delete_absent(&repo, &root, &dest);
    assert_eq!(
        listing(&outside),
        outside_before,
        "nothing outside the target is removed ({r:?})"
    );
    let e = r.expect_err("entering a directory swapped for a symlink must fail");
    assert!(e.to_string().contains("src"), "{e}");

    // Without interference: exactly what the snapshot lacks is removed.
    fs::remove_file(dest.join("src")).unwrap();
    fs::rename(dest.join("src.moved-aside"), dest.join("src")).unwrap();
    assert_eq!(
        cairn::delete_absent::delete_absent(&repo, &root, &dest).unwrap(),
        1
    );
    assert!(!dest.join("src/added").exists());
    assert_eq!(fs::read(dest.join("src/sub/k")).unwrap(), b"kept");
}
