//! The property that `fuzz_targets/archive_extract.rs` (libFuzzer) and `tests/fuzz_smoke.rs` (stable Rust)
//! check on the archive importer's extraction: arbitrary bytes given as a `.tar.gz` or a `.zip` give an error
//! or the list of skipped members, never a panic, and nothing outside the extraction directory is written or
//! reachable from it as a file (no member is a hard link to a file outside).
//!
//! Input: an even first byte means "the rest is a tar": it is gzipped and extracted as a `.tar.gz` (so the
//! fuzzer explores tar headers, not gzip checksums); an odd one means "the rest as is" (a zip, or whatever its
//! magic bytes say).

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const SENTINEL: &[u8] = b"fuzz-sentinel: a host file outside the archive";

/// The extraction directory is `<tmp>/t/x/archive`: `../../../outside/secret` from a top-level member is the
/// sentinel, so relative escapes have something to find.
pub const ESCAPE: &str = "../../../outside/secret";

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every entry under `dir`, never following a symlink.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        let md = fs::symlink_metadata(&p).expect("lstat");
        f(&p, &md);
        if md.is_dir() {
            walk(&p, f);
        }
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// Extracts `data` (see the module docs) in a temporary directory and asserts the property.
#[allow(dead_code)] // the libFuzzer target's entry; the smoke test uses check_in on a tmpfs
pub fn check(data: &[u8]) {
    check_in(&std::env::temp_dir(), data)
}

/// [`check`] in a temporary directory under `base` (a tmpfs keeps thousands of runs fast).
pub fn check_in(base: &Path, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let secret = outside.join("secret");
    fs::write(&secret, SENTINEL).expect("write");
    let dest = dir.path().join("t/x/archive");
    fs::create_dir_all(&dest).expect("mkdir");
    let input = dir.path().join("input");
    let bytes = if mode & 1 == 0 {
        gzip(rest)
    } else {
        rest.to_vec()
    };
    fs::write(&input, &bytes).expect("write");

    let _ = cairn::archive::extract(&input, &dest);

    assert_eq!(
        names(dir.path()),
        ["input", "outside", "t"],
        "written outside"
    );
    assert_eq!(names(&outside), ["secret"], "written outside");
    assert_eq!(names(&dir.path().join("t")), ["x"], "written outside");
    assert_eq!(
        names(&dir.path().join("t/x")),
        ["archive"],
        "written outside"
    );
    let md = fs::symlink_metadata(&secret).expect("lstat");
    assert!(md.is_file() && md.nlink() == 1, "the sentinel was linked");
    assert_eq!(
        fs::read(&secret).expect("read"),
        SENTINEL,
        "sentinel changed"
    );
    walk(&dest, &mut |p, m| {
        assert!(
            !(m.is_file() && m.ino() == md.ino() && m.dev() == md.dev()),
            "{} is the host file",
            p.display()
        );
    });
}

/// The whole import (extraction, then the backup of what was extracted) of the archive `make` builds, given
/// the absolute path of a host directory holding the sentinel (so absolute escapes have something to find):
/// no file of the snapshot holds the sentinel, and the host directory is unchanged. Not used by the libFuzzer
/// target (a repository per input is slow); `tests/fuzz_smoke.rs` runs it over generated archives.
#[allow(dead_code)]
pub fn check_import_in(base: &Path, make: &dyn Fn(&Path) -> Vec<u8>) {
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    let secret = outside.join("secret");
    fs::write(&secret, SENTINEL).expect("write");
    let root = dir.path().join("repo");
    let repo = cairn::Repository::init(&root, cairn::config::Config::new_default()).expect("init");
    let input = dir.path().join("input");
    fs::write(&input, make(&outside)).expect("write");
    let time = chrono::DateTime::parse_from_rfc3339("2025-06-30T02:00:00Z").expect("time");
    let Ok(report) = cairn::archive::import_archive(&repo, &input, None, time) else {
        return;
    };
    assert_eq!(names(&outside), ["secret"], "written outside");
    assert_eq!(
        fs::read(&secret).expect("read"),
        SENTINEL,
        "sentinel changed"
    );
    let snap = &report.backup.snapshot;
    // The files' exact paths (names need not be UTF-8), then each dumped by its path.
    let mut files = Vec::new();
    let _ = cairn::listing::list(&repo, snap, "", &mut |path, node| {
        if let cairn::tree::NodeKind::File { .. } = node.kind {
            files.push(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(path)));
        }
        Ok(())
    });
    for path in files {
        let mut out = Vec::new();
        cairn::restore::dump(&repo, snap, &path, &mut out).expect("dump");
        assert!(
            !out.windows(SENTINEL.len()).any(|w| w == SENTINEL),
            "{}: the snapshot holds the host file",
            path.display()
        );
    }
}
