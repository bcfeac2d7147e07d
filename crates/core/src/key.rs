//! 128-bit fingerprints of (database, tenant, subject): the keys of the shared-memory index.
//!
//! One XXH3-128 pass over a length-prefixed encoding, seeded with a random value chosen when the
//! server creates its shared memory (`set_seed`), so that names cannot be crafted to collide
//! with another subject's. All backends of a server share the seed; shared memory never outlives
//! it, so nothing depends on a fingerprint across restarts. A collision between two of a million
//! live subjects has a probability near 2^-89 (n^2 / 2^129).

use std::sync::atomic::{AtomicU64, Ordering};
use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct Key {
    pub hi: u64,
    pub lo: u64,
}

const DEFAULT_SEED: u64 = 0x6370_5f6b_6579_7331;
static SEED: AtomicU64 = AtomicU64::new(DEFAULT_SEED);

/// A 64-bit hash of `bytes` under the server's seed (where a reservation id's slot is looked for).
pub fn seeded_hash(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, SEED.load(Ordering::Relaxed))
}

/// Sets the seed of every fingerprint this process computes (the server's, from shared memory).
pub fn set_seed(seed: u64) {
    SEED.store(seed, Ordering::Relaxed);
}

/// The bit of a name's length prefix that marks an organisation's name.
const ORG_DOMAIN: u32 = 1 << 31;

/// Inputs up to this many bytes are encoded on the stack.
const INLINE: usize = 12 + 2 * crate::MAX_NAME_BYTES;

impl Key {
    /// The key of a subject.
    pub fn of(db: u32, tenant: &str, subject: &str) -> Key {
        Key::encoded(db, tenant, subject, 0)
    }

    /// The key of an organisation: a domain of its own (its name's length prefix carries a bit
    /// no subject name's can, names being at most 256 bytes), so that no subject shares it.
    pub fn org(db: u32, tenant: &str, org: &str) -> Key {
        Key::encoded(db, tenant, org, ORG_DOMAIN)
    }

    fn encoded(db: u32, tenant: &str, name: &str, domain: u32) -> Key {
        let n = 12 + tenant.len() + name.len();
        let encode = |b: &mut [u8]| {
            let t = 8 + tenant.len();
            b[..4].copy_from_slice(&db.to_le_bytes());
            b[4..8].copy_from_slice(&(tenant.len() as u32).to_le_bytes());
            b[8..t].copy_from_slice(tenant.as_bytes());
            b[t..t + 4].copy_from_slice(&(name.len() as u32 | domain).to_le_bytes());
            b[t + 4..].copy_from_slice(name.as_bytes());
        };
        let seed = SEED.load(Ordering::Relaxed);
        let h = if n <= INLINE {
            let mut buf = [0u8; INLINE];
            encode(&mut buf[..n]);
            xxh3_128_with_seed(&buf[..n], seed)
        } else {
            let mut buf = vec![0u8; n];
            encode(&mut buf);
            xxh3_128_with_seed(&buf, seed)
        };
        let mut k = Key {
            hi: (h >> 64) as u64,
            lo: h as u64,
        };
        if k.is_empty() {
            k.lo = 1; // (0, 0) marks an empty slot
        }
        k
    }

    pub fn is_empty(&self) -> bool {
        self.hi == 0 && self.lo == 0
    }

    /// Lock bucket used to serialise ledger rebuilds against recorders of the same subject.
    pub fn bucket(&self, buckets: u32) -> u32 {
        (self.lo % buckets as u64) as u32
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// Serialises the tests that compute keys: one of them changes the process-wide seed.
    static SEEDED: Mutex<()> = Mutex::new(());

    #[test]
    fn both_halves_carry_the_hash_and_the_seed_matters() {
        let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = (Key::of(1, "t", "a"), Key::of(1, "t", "b"));
        assert_ne!(a.hi, b.hi);
        assert_ne!(a.lo, b.lo);
        assert!(!a.is_empty() && !b.is_empty());
        assert!(Key::default().is_empty());
        assert!(!Key { hi: 1, lo: 0 }.is_empty() && !Key { hi: 0, lo: 1 }.is_empty());
        assert_eq!(Key { hi: 9, lo: 7 }.bucket(5), 2);
        assert_eq!(Key { hi: 9, lo: 130 }.bucket(128), 2);
        // Other tests in this process use the default seed: set it back.
        let before = Key::of(3, "t", "s");
        set_seed(42);
        let seeded = Key::of(3, "t", "s");
        set_seed(DEFAULT_SEED);
        assert_ne!(before, seeded);
        assert_eq!(Key::of(3, "t", "s"), before);
    }

    #[test]
    fn distinct_inputs_distinct_keys() {
        let _one_at_a_time = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        for db in 0..3u32 {
            for t in ["default", "acme", "a", ""] {
                for s in ["u1", "u2", "", "default", "acmeu1"] {
                    assert!(seen.insert(Key::of(db, t, s)), "{db} {t} {s}");
                }
            }
        }
        // an organisation never shares a subject's key
        assert_ne!(Key::org(1, "t", "acme"), Key::of(1, "t", "acme"));
        assert_eq!(Key::org(1, "t", "acme"), Key::org(1, "t", "acme"));
        assert_ne!(Key::org(1, "t", "acme"), Key::org(1, "u", "acme"));
        // the length prefix separates ("ab","c") from ("a","bc")
        assert_ne!(Key::of(1, "ab", "c"), Key::of(1, "a", "bc"));
        assert_eq!(Key::of(1, "t", "s"), Key::of(1, "t", "s"));
        // names longer than the stack buffer take the same encoding
        let long = "x".repeat(INLINE);
        assert_ne!(Key::of(1, &long, "s"), Key::of(1, &long, "t"));
        assert_eq!(Key::of(1, "t", &long), Key::of(1, "t", &long));
    }
}
