//! The archive importer's extraction over arbitrary bytes, as a `.tar.gz` or a `.zip`: never a panic, nothing
//! outside the extraction directory written or linked in (see `../archive_check.rs`).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../archive_check.rs"]
mod archive_check;

fuzz_target!(|data: &[u8]| archive_check::check(data));
