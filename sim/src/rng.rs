//! Seeded randomness. Each concern draws from its own stream so that, for a
//! given seed, the workload and demand are identical under every policy, and
//! an executor's behaviour for a task run does not depend on the order in
//! which the policy happened to launch tasks.

use rand::SeedableRng;
use rand::rngs::SmallRng;

/// A generator for the named stream of `seed`.
pub fn stream(seed: u64, name: &str) -> SmallRng {
    SmallRng::seed_from_u64(mix(seed ^ fnv1a(name.as_bytes())))
}

/// A uniform draw in `[0, 1)` that depends only on its arguments: used for
/// per-run executor behaviour (launch latency, failure) of task `(job, index)`.
pub fn unit(seed: u64, job: u64, index: u32, attempt: u32, salt: u64) -> f64 {
    let mut h = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
    h = mix(h ^ job);
    h = mix(h ^ (u64::from(index) << 32 | u64::from(attempt)));
    h = mix(h ^ salt);
    // 53 random bits → [0, 1).
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64's finalizer: a cheap, well-mixed 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over bytes: a stable (not `RandomState`) hash of stream names.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
