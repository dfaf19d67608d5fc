//! Deterministic hash maps. The std `HashMap`/`HashSet` types are banned in
//! this crate (`clippy.toml`) because their default hasher is seeded by the
//! OS, so iteration order would differ between runs and between a core and
//! its restored copy. These use hashbrown with the fixed Fx hash instead.

/// A hash map with deterministic (not OS-seeded) hashing.
pub(crate) type FxMap<K, V> = hashbrown::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// A hash set with deterministic (not OS-seeded) hashing.
pub(crate) type FxSet<T> = hashbrown::HashSet<T, rustc_hash::FxBuildHasher>;
