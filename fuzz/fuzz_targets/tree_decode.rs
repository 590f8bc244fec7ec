//! Tree objects are untrusted input: decoding arbitrary bytes must fail cleanly, and what decodes must encode.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = cairn::tree::Tree::decode(data) {
        let _ = tree.encode();
    }
});
