//! Inputs and settings shared by the criterion benchmarks (BENCHMARKS.md, "Micro-benchmarks").
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;

/// Few samples and short measurements: `cargo bench` must finish in minutes on a shared 2-core machine.
/// Criterion's own flags (`--sample-size`, `--measurement-time`) still override these.
pub fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// Incompressible bytes, like JPEG, PDF or ZIP attachments (xorshift64, so every run sees the same input).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text from a 256-word vocabulary, which zstd level 3 shrinks about 3x (like the e2e corpus's text files).
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut words: Vec<Vec<u8>> = Vec::with_capacity(256);
    let letters = b"etaoinshrdlcumwfgypbvkjxqz";
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..256 {
        let n = 2 + (next() % 9) as usize;
        // Squaring the draw favours the frequent letters at the front of `letters`.
        let w = (0..n)
            .map(|_| {
                let r = (next() % 26) as usize;
                letters[r * r / 26]
            })
            .collect();
        words.push(w);
    }
    let picks = random_bytes(len / 2 + 16, seed);
    let mut out = Vec::with_capacity(len + 16);
    for (i, &b) in picks.iter().enumerate() {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(&words[b as usize]);
        out.push(if i % 13 == 12 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// Half random, half text, in 1 MiB stretches: what a file store looks like to the chunker.
pub fn mixed_bytes(len: usize, seed: u64) -> Vec<u8> {
    const STRETCH: usize = 1 << 20;
    let mut out = Vec::with_capacity(len);
    let mut i = 0;
    while out.len() < len {
        let n = STRETCH.min(len - out.len());
        if i % 2 == 0 {
            out.extend(random_bytes(n, seed + i));
        } else {
            out.extend(text_bytes(n, seed + i));
        }
        i += 1;
    }
    out
}

/// Resident and peak resident memory of this process in MB, from /proc/self/status.
pub fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
