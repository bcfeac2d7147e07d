//! 128-bit fingerprints of (database, tenant, subject): the keys of the shared-memory index.
//!
//! Two independent SipHash-2-4 passes over a length-prefixed encoding. The fingerprint is stable
//! for one build of the library (all backends of a server share it); shared memory never outlives
//! a server, so nothing depends on it across builds. A collision between two live subjects has a
//! probability near 2^-100 at a million keys.

use std::hash::Hasher;

#[allow(deprecated)]
use std::hash::SipHasher;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct Key {
    pub hi: u64,
    pub lo: u64,
}

impl Key {
    pub fn of(db: u32, tenant: &str, subject: &str) -> Key {
        let h = |seed: u64| {
            #[allow(deprecated)]
            let mut s = SipHasher::new_with_keys(seed, seed.rotate_left(29) ^ 0x6370_5f6b_6579_7331);
            s.write_u32(db);
            s.write_u64(tenant.len() as u64);
            s.write(tenant.as_bytes());
            s.write_u64(subject.len() as u64);
            s.write(subject.as_bytes());
            s.finish()
        };
        let mut k = Key {
            hi: h(0x0123_4567_89ab_cdef),
            lo: h(0xfedc_ba98_7654_3210),
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

    #[test]
    fn distinct_inputs_distinct_keys() {
        let mut seen = HashSet::new();
        for db in 0..3u32 {
            for t in ["default", "acme", "a", ""] {
                for s in ["u1", "u2", "", "default", "acmeu1"] {
                    assert!(seen.insert(Key::of(db, t, s)), "{db} {t} {s}");
                }
            }
        }
        // the length prefix separates ("ab","c") from ("a","bc")
        assert_ne!(Key::of(1, "ab", "c"), Key::of(1, "a", "bc"));
        assert_eq!(Key::of(1, "t", "s"), Key::of(1, "t", "s"));
    }
}
