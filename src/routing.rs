//! Which shard owns a room. The hash must stay the same across processes, versions and
//! machines (operators may reason about placement), so it is FNV-1a 64, defined here,
//! rather than a std hasher whose keys or algorithm may change.

/// FNV-1a, 64 bit.
pub fn stable_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard that owns `key` among `shards`.
pub fn owner_shard(key: &str, shards: usize) -> usize {
    (stable_hash(key) % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fnv1a() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn rooms_spread_over_shards() {
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[owner_shard(&format!("room-{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
