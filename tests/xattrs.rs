//! Extended attributes and POSIX ACLs (issue 15): recorded at backup, restored byte for byte, through the real
//! binary; trees without them keep the version 1 encoding (tests/format_vectors.rs).

mod harness;

use std::path::Path;
use std::process::Command;

use harness::*;

fn tool(name: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(name).args(args).output().ok()?;
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn set_user_xattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value).unwrap();
}

#[test]
fn xattrs_and_acls_round_trip_byte_for_byte() {
    let (dir, repo) = new_repo();
    let src = dir.path().join("src");
    build_rich_tree(&src, 20);
    let file = src.join("docs/readme.txt");
    set_user_xattr(&file, "user.checksum", b"abc123");
    set_user_xattr(&file, "user.binary", &[0, 1, 2, 255, 0]);
    set_user_xattr(&src.join("docs"), "user.on-a-dir", b"dir attr");
    set_user_xattr(&src.join("empty-file"), "user.empty-value", b"");
    let acl_file = src.join("compressible.txt");
    let acl_dir = src.join("docs/nested");
    let have_setfacl = tool(
        "setfacl",
        &["-m", "u:nobody:rw,g:nogroup:r", acl_file.to_str().unwrap()],
    )
    .is_some();
    if have_setfacl {
        tool(
            "setfacl",
            &["-d", "-m", "u:nobody:rwx", acl_dir.to_str().unwrap()],
        );
        tool(
            "setfacl",
            &["-m", "u:nobody:r-x", acl_dir.to_str().unwrap()],
        );
    } else {
        // The same kernel attributes, written directly: user nobody (65534) rw, mask rw.
        eprintln!("setfacl not installed: ACLs written as raw system.posix_acl_access");
        let acl: Vec<u8> = [
            &2u32.to_le_bytes()[..],
            &[1, 0, 6, 0],
            &u32::MAX.to_le_bytes(),
            &[2, 0, 6, 0],
            &65534u32.to_le_bytes(),
            &[4, 0, 4, 0],
            &u32::MAX.to_le_bytes(),
            &[0x10, 0, 6, 0],
            &u32::MAX.to_le_bytes(),
            &[0x20, 0, 4, 0],
            &u32::MAX.to_le_bytes(),
        ]
        .concat();
        xattr::set(&acl_file, "system.posix_acl_access", &acl).unwrap();
    }
    // Editing attributes changed no mtime, but pin the directories' anyway: the comparison includes them.
    set_mtime(&acl_dir, 1_650_000_000, 42);

    let v = backup_json(&repo, &[src.to_str().unwrap()]);
    let snap = v["snapshot_id"].as_str().unwrap();
    let target = dir.path().join("restored");
    ok(cairn(&repo).args(["restore", snap, "--target", target.to_str().unwrap()]));
    assert_same_tree(&src, &target.join("src"));
    let restored = target.join("src/docs/readme.txt");
    assert_eq!(
        xattr::get(&restored, "user.binary").unwrap().unwrap(),
        [0, 1, 2, 255, 0]
    );
    assert!(xattr::get(
        target.join("src/compressible.txt"),
        "system.posix_acl_access"
    )
    .unwrap()
    .is_some());
    if have_setfacl {
        let acl = |p: &Path| tool("getfacl", &["-p", p.to_str().unwrap()]).unwrap();
        assert_eq!(
            acl(&acl_file).replace(src.to_str().unwrap(), ""),
            acl(&target.join("src/compressible.txt"))
                .replace(target.join("src").to_str().unwrap(), "")
        );
        let restored_dir = acl(&target.join("src/docs/nested"));
        assert!(
            restored_dir.contains("default:user:nobody:rwx")
                && restored_dir.contains("user:nobody:r-x"),
            "{restored_dir}"
        );
    }
    // The repository is consistent, and a diff sees an attribute change.
    ok(cairn(&repo).args(["check", "--read-data"]));
    set_user_xattr(&file, "user.checksum", b"changed");
    let v2 = backup_json(&repo, &[src.to_str().unwrap()]);
    let d: serde_json::Value = serde_json::from_str(&ok(cairn(&repo).args([
        "diff",
        "--json",
        snap,
        v2["snapshot_id"].as_str().unwrap(),
    ])))
    .unwrap();
    let changed = d["changed"].as_array().unwrap();
    assert!(
        changed
            .iter()
            .any(|c| c["path"] == "src/docs/readme.txt" && c["metadata"].get("xattrs").is_some()),
        "{d:#}"
    );
    // readme.txt and its hard link: one inode, whose ctime moved with the attribute.
    assert_eq!(v2["files_changed"], 2, "{v2}");
}
