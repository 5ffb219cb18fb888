//! Mutations of seed inputs: byte-level for every format, token-level for the text ones.

use revseg::rng::Rng;

/// Inputs never grow past this: readers must refuse what files declare, and a large input would
/// only slow the search down.
pub const MAX_LEN: usize = 64 << 10;

const BYTES: [u8; 8] = [0, 0xFF, 0x7F, 0x80, 1, 0xFE, 0x40, 0x20];
const WORDS: [u64; 9] = [
    0,
    1,
    u64::MAX,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 62,
    i64::MAX as u64,
    0x8000_0000_0000_0000,
];
const NUMBERS: [&str; 14] = [
    "0",
    "-1",
    "-0",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "100000000000000000000000",
    "9223372036854775807",
    "1e309",
    "-1e309",
    "NaN",
    "nan",
    "inf",
    "0.5",
];
const BRACKETS: &[u8] = b"[]{}\",:=";

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[rng.range(0, v.len() - 1)]
}

/// A random byte range of `v` (possibly empty).
fn span(rng: &mut Rng, len: usize) -> (usize, usize) {
    let a = rng.range(0, len);
    let b = rng.range(a, len.min(a + 64));
    (a, b)
}

/// One byte-level mutation; `other` is another seed to splice from.
fn mutate_bytes(rng: &mut Rng, v: &mut Vec<u8>, other: &[u8]) {
    if v.is_empty() {
        v.push(*pick(rng, &BYTES));
        return;
    }
    let i = rng.range(0, v.len() - 1);
    match rng.range(0, 8) {
        0 => v[i] ^= 1 << rng.range(0, 7),
        1 => v[i] = *pick(rng, &BYTES),
        2 | 3 => {
            let w = *pick(rng, &WORDS);
            let bytes = match rng.range(0, 3) {
                0 => (w as u32).to_le_bytes().to_vec(),
                1 => (w as u32).to_be_bytes().to_vec(),
                2 => w.to_le_bytes().to_vec(),
                _ => w.to_be_bytes().to_vec(),
            };
            for (k, b) in bytes.into_iter().enumerate() {
                if let Some(x) = v.get_mut(i + k) {
                    *x = b;
                }
            }
        }
        4 => v.truncate(i),
        5 if !other.is_empty() => {
            let (a, b) = span(rng, other.len());
            v.truncate(i);
            v.extend_from_slice(&other[a..b]);
        }
        6 => {
            let n = rng.range(1, 16);
            let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            v.splice(i..i, ins);
        }
        7 => {
            let (a, b) = span(rng, v.len());
            let dup = v[a..b].to_vec();
            v.splice(i..i, dup);
        }
        _ => {
            let (a, b) = span(rng, v.len());
            v.drain(a..b);
        }
    }
}

/// Byte ranges of the numbers in `v` (digits with an optional leading '-').
fn numbers(v: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if v[i].is_ascii_digit() {
            let a = if i > 0 && v[i - 1] == b'-' { i - 1 } else { i };
            while i < v.len() && (v[i].is_ascii_digit() || v[i] == b'.') {
                i += 1;
            }
            out.push((a, i));
        } else {
            i += 1;
        }
    }
    out
}

/// One token-level mutation of a text format: numbers to extremes, brackets removed or doubled.
fn mutate_text(rng: &mut Rng, v: &mut Vec<u8>) -> bool {
    if rng.range(0, 1) == 0 {
        let nums = numbers(v);
        if nums.is_empty() {
            return false;
        }
        let (a, b) = *pick(rng, &nums);
        v.splice(a..b, pick(rng, &NUMBERS).bytes());
    } else {
        let at: Vec<usize> = (0..v.len()).filter(|&i| BRACKETS.contains(&v[i])).collect();
        if at.is_empty() {
            return false;
        }
        let i = *pick(rng, &at);
        if rng.range(0, 1) == 0 {
            v.remove(i);
        } else {
            v.insert(i, v[i]);
        }
    }
    true
}

/// A mutant of one of `seeds`: one to four mutations, text ones favoured where `text`.
pub fn mutant(rng: &mut Rng, seeds: &[Vec<u8>], text: bool) -> Vec<u8> {
    let mut v = pick(rng, seeds).clone();
    let other = pick(rng, seeds).clone();
    for _ in 0..rng.range(1, 4) {
        if !(text && rng.range(0, 2) > 0 && mutate_text(rng, &mut v)) {
            mutate_bytes(rng, &mut v, &other);
        }
    }
    v.truncate(MAX_LEN);
    v
}

#[test]
fn numbers_are_found_with_their_sign() {
    let n = numbers(b"[12, -3.5]x7");
    assert_eq!(n, vec![(1, 3), (5, 9), (11, 12)]);
}
