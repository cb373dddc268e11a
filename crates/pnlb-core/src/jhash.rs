//! Bob Jenkins' lookup3 `jhash2` over 32-bit words, exactly as
//! `bpf/lib/jhash.h` computes it, so the control plane and tests can predict
//! the table slot the data plane picks for a flow.

const INITVAL: u32 = 0xdead_beef;

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

fn finalize(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Hashes `words` with `initval` (the kernel's `jhash2`).
pub fn jhash2(words: &[u32], initval: u32) -> u32 {
    let len = words.len() as u32;
    let start = INITVAL.wrapping_add(len << 2).wrapping_add(initval);
    let (mut a, mut b, mut c) = (start, start, start);
    let mut rest = words;
    while rest.len() > 3 {
        a = a.wrapping_add(rest[0]);
        b = b.wrapping_add(rest[1]);
        c = c.wrapping_add(rest[2]);
        mix(&mut a, &mut b, &mut c);
        rest = &rest[3..];
    }
    match rest.len() {
        0 => return c,
        3 => {
            c = c.wrapping_add(rest[2]);
            b = b.wrapping_add(rest[1]);
            a = a.wrapping_add(rest[0]);
        }
        2 => {
            b = b.wrapping_add(rest[1]);
            a = a.wrapping_add(rest[0]);
        }
        _ => a = a.wrapping_add(rest[0]),
    }
    finalize(&mut a, &mut b, &mut c);
    c
}

/// Reads bytes as the native-endian 32-bit words a BPF program would load.
pub fn words_of(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_hashes_to_the_start_value() {
        assert_eq!(jhash2(&[], 0), INITVAL);
    }

    #[test]
    fn every_word_changes_the_hash() {
        let base = [1u32, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        let h = jhash2(&base, 42);
        for i in 0..base.len() {
            let mut changed = base;
            changed[i] ^= 1;
            assert_ne!(jhash2(&changed, 42), h, "word {i} ignored");
        }
    }
}
