//! The restore's write side through the real binary (issue 12: local restore speed on a second corpus shape).

mod harness;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::Path;

use harness::*;

/// Page-cache state of a whole file, from `cachestat(2)` (Linux 6.5+): `None` where the kernel lacks it.
#[repr(C)]
#[derive(Default)]
struct CacheStat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

fn cachestat(path: &Path) -> Option<CacheStat> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    // The same number on every architecture that has it (the generic syscall table).
    const SYS_CACHESTAT: libc::c_long = 451;
    let file = File::open(path).unwrap();
    let range = Range { off: 0, len: 0 }; // len 0: to the end of the file
    let mut cs = CacheStat::default();
    // SAFETY: both pointers are valid for the call; the descriptor is open.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut cs as *mut CacheStat,
            0u32,
        )
    };
    (r == 0).then_some(cs)
}

fn on_tmpfs(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path and `st` a valid out-pointer.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    st.f_type == libc::TMPFS_MAGIC
}

/// Several batches of files (more files than one batch opens), one- and many-chunk, random and text.
fn build_corpus(root: &Path) -> u64 {
    let mut total = 0u64;
    for i in 0..700usize {
        let dir = root.join(format!("d{:02}", i % 30));
        fs::create_dir_all(&dir).unwrap();
        let len = match i % 7 {
            0 => 1_500_000 + i * 311,
            1 | 2 => 200_000 + i * 97,
            _ => 4_000 + (i * 7919) % 60_000,
        };
        let data = if i % 2 == 0 {
            pseudo_random(len, i as u64)
        } else {
            format!("line {i} of some text\n")
                .repeat(len / 20 + 1)
                .into_bytes()[..len]
                .to_vec()
        };
        total += data.len() as u64;
        fs::write(dir.join(format!("f{i:04}")), data).unwrap();
    }
    total
}

/// When `cairn restore` returns, every restored file is complete and exact and the bytes of every file that
/// is not small are already on their way to the disk (no page of it left dirty for a later `sync` alone to
/// start writing): a restore of a few GB must not leave the disk idle while it decodes and then make the
/// caller's `sync` write everything. Small files (under `EARLY_WRITEBACK_MIN`) are left to the kernel's
/// write-out, which costs less than one write-out of their own each (BENCHMARKS.md, "Restore of many small
/// files"): their pages are not counted.
#[test]
fn restore_starts_writing_each_file_out_before_it_returns() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("corpus");
    let total = build_corpus(&src);
    ok(cairn(&repo).args(["backup"]).arg(&src));
    let target = dir.path().join("out");
    if on_tmpfs(dir.path()) {
        eprintln!(
            "skipped: {} is on tmpfs (no writeback)",
            dir.path().display()
        );
        return;
    }
    ok(cairn(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&target));
    let restored = target.join("corpus");
    let (mut pages, mut dirty, mut files, mut large) = (0u64, 0u64, 0usize, 0usize);
    for entry in fs::read_dir(&restored).unwrap() {
        for file in fs::read_dir(entry.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            files += 1;
            if fs::metadata(&path).unwrap().len() < cairn::restore::files::EARLY_WRITEBACK_MIN {
                continue;
            }
            let Some(cs) = cachestat(&path) else {
                eprintln!("skipped: cachestat(2) is not available on this kernel");
                return;
            };
            pages += cs.nr_cache;
            dirty += cs.nr_dirty;
            large += 1;
        }
    }
    assert_eq!(files, 700);
    // The 1.5 MB files of the corpus (one in seven) and the largest of its ~200 KB ones.
    assert_eq!(large, 116);
    assert!(
        pages > 0,
        "the restored files are not in the page cache at all"
    );
    // The kernel's own writeback may start on some files anyway; what must not happen is that most pages
    // are still dirty, untouched, when the restore returns.
    assert!(
        dirty * 100 <= pages,
        "{dirty} of {pages} cached pages of the restored files are still dirty after restore returned"
    );
    assert_same_tree(&src, &restored);
    assert!(
        total > 100 << 20,
        "the corpus spans several batches of files"
    );
}

/// Bytes a file takes on disk (its allocated blocks), not its length.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

/// `restore --sparse` leaves holes where a file has long runs of zeros (a disk image, a preallocated database
/// file): a 96 MiB file with 2 MiB of data in it comes back with the same bytes, length and mtime in a few
/// MiB of disk, including a hole at its end; without `--sparse` every byte is allocated, as before.
#[test]
fn sparse_restore_leaves_holes_and_restores_the_same_bytes() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("img");
    fs::create_dir_all(&src).unwrap();
    let disk = src.join("disk.img");
    let file = File::create(&disk).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&pseudo_random(1 << 20, 7), 0).unwrap();
    file.write_all_at(&pseudo_random(1 << 20, 8), 40 << 20)
        .unwrap();
    file.set_len(96 << 20).unwrap(); // ends in a 55 MiB hole
    drop(file);
    fs::write(src.join("zeros"), vec![0u8; 8 << 20]).unwrap(); // written zeros, no data at all
    set_mtime(&disk, 1_700_000_000, 5);
    ok(cairn(&repo).args(["backup"]).arg(&src));

    let sparse = dir.path().join("sparse");
    ok(cairn(&repo)
        .args(["restore", "latest", "--sparse", "--target"])
        .arg(&sparse));
    assert_same_tree(&src, &sparse.join("img"));
    let restored = sparse.join("img/disk.img");
    assert_eq!(fs::read(&restored).unwrap(), fs::read(&disk).unwrap());
    if on_tmpfs(dir.path()) || allocated(&disk) > 8 << 20 {
        eprintln!("skipped the allocation checks: this file system does not keep holes");
        return;
    }
    assert!(
        allocated(&restored) < 8 << 20,
        "sparse restore allocated {} bytes for 2 MiB of data",
        allocated(&restored)
    );
    assert!(allocated(&sparse.join("img/zeros")) < 1 << 20);

    let dense = dir.path().join("dense");
    ok(cairn(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&dense));
    assert_same_tree(&src, &dense.join("img"));
    assert!(allocated(&dense.join("img/disk.img")) >= 96 << 20);
}

/// A sparse file's holes are not read at backup (as `truncate -s 10T` lets anyone who can write below a
/// backed-up path make, and which kept a backup reading zeros for hours: 20 GiB of hole took 51 s), and it
/// is cut into exactly the chunks its dense copy is: backing up the dense copy adds no chunk.
#[test]
fn a_sparse_file_is_backed_up_without_reading_its_holes_and_dedups_with_its_dense_copy() {
    use std::os::unix::fs::FileExt;
    let (dir, repo) = new_repo();
    let src = dir.path().join("img");
    fs::create_dir_all(&src).unwrap();
    let huge = src.join("huge.img");
    let file = File::create(&huge).unwrap();
    file.write_all_at(&pseudo_random(1 << 20, 3), 0).unwrap();
    file.write_all_at(&pseudo_random(1 << 20, 4), 40 << 30)
        .unwrap();
    file.set_len(64 << 30).unwrap();
    let small = src.join("small.img");
    let file = File::create(&small).unwrap();
    file.write_all_at(&pseudo_random(300_000, 5), 5 << 20)
        .unwrap();
    file.write_all_at(&pseudo_random(10_000, 6), 17 << 20)
        .unwrap();
    file.set_len(32 << 20).unwrap();
    drop(file);
    if allocated(&huge) > 64 << 20 {
        eprintln!("skipped: this file system does not keep holes");
        return;
    }
    let started = std::time::Instant::now();
    let first = backup_json(&repo, &[src.to_str().unwrap()]);
    // Reading 64 GiB of zeros takes minutes; counting its chunks, well under a second.
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
    assert_eq!(first["partial"], false);

    let dense = dir.path().join("dense");
    fs::create_dir_all(&dense).unwrap();
    fs::write(dense.join("small.img"), fs::read(&small).unwrap()).unwrap();
    let second = backup_json(&repo, &[dense.to_str().unwrap()]);
    assert_eq!(second["chunks_new"], 0, "{second}");

    let out = dir.path().join("out");
    ok(cairn(&repo)
        .args(["restore", "latest", "--target"])
        .arg(&out));
    assert_eq!(
        fs::read(out.join("dense/small.img")).unwrap(),
        fs::read(&small).unwrap()
    );
    ok(cairn(&repo).args(["check", "--read-data"]));
}
