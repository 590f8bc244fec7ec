//! `repair index` over a repository holding one arbitrary "pack": skipped and reported, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("repo");
    cairn::Repository::init(&root, cairn::config::Config::new_default()).expect("init");
    let id = cairn::Id::of(data).to_hex();
    let sub = root.join("packs").join(&id[..2]);
    std::fs::create_dir_all(&sub).expect("mkdir");
    std::fs::write(sub.join(&id), data).expect("write");
    let _ = cairn::repair::repair_index(&root);
});
