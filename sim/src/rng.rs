//! Seeded randomness. Each concern draws from its own stream so that, for a
//! given seed, the workload and demand are identical under every policy, and
//! an executor's behaviour for a task run does not depend on the order in
//! which the policy happened to launch tasks.
//!
//! The generator is ChaCha8 (`rand_chacha`), whose output for a seed is
//! specified by its algorithm and stable across versions and platforms.
//! `rand`'s `SmallRng` is documented as not portable (its algorithm may change
//! in any release and differs between 32- and 64-bit targets), which would
//! change every trace hash with a `rand` upgrade.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The simulator's random generator: pinned algorithm, reproducible everywhere.
pub type SimRng = ChaCha8Rng;

/// A generator for the named stream of `seed`.
pub fn stream(seed: u64, name: &str) -> SimRng {
    SimRng::seed_from_u64(mix(seed ^ fnv1a(name.as_bytes())))
}

/// A generator that depends only on its arguments: used for per-run executor
/// behaviour (launch latency) of task `(job, index)`.
pub fn for_run(seed: u64, job: u64, index: u32, attempt: u32, salt: u64) -> SimRng {
    SimRng::seed_from_u64(hash(seed, job, index, attempt, salt))
}

/// A uniform draw in `[0, 1)` that depends only on its arguments: used for
/// per-run executor behaviour (failure, failure point) of task `(job, index)`.
pub fn unit(seed: u64, job: u64, index: u32, attempt: u32, salt: u64) -> f64 {
    // 53 random bits → [0, 1).
    (hash(seed, job, index, attempt, salt) >> 11) as f64 / (1u64 << 53) as f64
}

fn hash(seed: u64, job: u64, index: u32, attempt: u32, salt: u64) -> u64 {
    let mut h = mix(seed ^ 0x9e37_79b9_7f4a_7c15);
    h = mix(h ^ job);
    h = mix(h ^ (u64::from(index) << 32 | u64::from(attempt)));
    mix(h ^ salt)
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

#[cfg(test)]
mod tests {
    use rand::RngCore;

    use super::*;

    /// The first outputs of a stream are fixed forever: if this fails, a
    /// dependency changed the generator and every trace hash moved with it.
    #[test]
    fn streams_are_pinned_to_chacha8_output() {
        let mut r = stream(1, "workload/season-1");
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut again = stream(1, "workload/season-1");
        assert_eq!(got, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_eq!(got, PINNED, "ChaCha8 output for seed 1 changed");
        assert_ne!(stream(2, "workload/season-1").next_u64(), got[0]);
        assert_ne!(stream(1, "workload/other").next_u64(), got[0]);
    }

    const PINNED: [u64; 3] = [
        18_424_062_068_136_398_752,
        4_847_931_986_313_442_711,
        945_269_341_074_042_321,
    ];

    #[test]
    fn unit_draws_are_in_range_and_depend_on_every_argument() {
        let base = unit(1, 2, 3, 4, 5);
        assert!((0.0..1.0).contains(&base));
        for other in [
            unit(9, 2, 3, 4, 5),
            unit(1, 9, 3, 4, 5),
            unit(1, 2, 9, 4, 5),
            unit(1, 2, 3, 9, 5),
            unit(1, 2, 3, 4, 9),
        ] {
            assert_ne!(other, base);
        }
    }
}
