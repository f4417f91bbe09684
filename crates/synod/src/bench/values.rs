//! The keys and values the workloads write, and the generator that picks them.

/// A key of `size` bytes for number `n` (zero-padded decimal, etcd's benchmark does the same).
pub(super) fn key_of(n: u64, size: usize) -> Vec<u8> {
    let text = format!("{n:0size$}");
    let bytes = text.into_bytes();
    bytes[bytes.len().saturating_sub(size.max(1))..].to_vec()
}

/// A small random generator (xorshift), so the benchmark needs no extra dependency.
pub(super) struct Random(pub(super) u64);

impl Random {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `size` random bytes from `seed`. Values are random, as etcd's benchmark tool makes them: a
/// run of one letter compresses to nothing in Synod's Raft log (raft-engine compresses write
/// batches) and not in etcd's, which would flatter Synod.
pub(super) fn random_bytes(seed: u64, size: usize) -> Vec<u8> {
    let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        bytes.extend_from_slice(&random.next().to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

/// A value of `size` random bytes that names operation `n` (so `--verify` can tell writes
/// apart).
pub(super) fn value_of(n: u64, size: usize) -> Vec<u8> {
    let mut value = random_bytes(n, size);
    let tag = n.to_string().into_bytes();
    let len = tag.len().min(size);
    value[..len].copy_from_slice(&tag[..len]);
    value
}

pub(super) fn pick_key(random: &mut Random, n: u64, space: u64, sequential: bool) -> u64 {
    let space = space.max(1);
    if sequential {
        n % space
    } else {
        random.next() % space
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: benchmark values do not compress (a run of one letter cost Synod's compressed log
    /// nothing and etcd's WAL its full size; TRACK_RECORD.md, row 69). No byte value may stand
    /// out the way a repeated letter does: 4 KiB of uniform bytes hold each about 16 times.
    #[test]
    fn values_are_random_bytes() {
        for n in [0, 1, 12_345] {
            let value = value_of(n, 4096);
            assert_eq!(value.len(), 4096);
            let mut counts = [0_u32; 256];
            for byte in &value {
                counts[*byte as usize] += 1;
            }
            let most = counts.iter().max().copied().unwrap_or(0);
            assert!(most < 64, "value {n}: one byte value {most} times of 4096");
        }
        assert_ne!(value_of(1, 64), value_of(2, 64));
    }
}
