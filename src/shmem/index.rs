//! The subject index in shared memory: one entry (`index::Slot` of the core crate) per
//! (database, tenant, subject) with its calendar totals (in its tenant's time zone), rate states
//! and where its policy comes from.
//!
//! Entries are split into `NPARTS` partitions, each a `Ring` (linear probing, backward-shift
//! deletion; see the core crate, where it is unit-tested) guarded by its own LWLock (tranche
//! `control_plane_subjects_v1`). This file maps the partitions and takes the locks; nothing that
//! can raise an error runs while a partition lock is held.

use super::{PartGuard, Shared, Stat, NPARTS};
use crate::admission::State;
pub use crate::index::{
    Admitted, Effect, Grant, Hold, PolicyStamp, Slot, POLICY_ACTIVE, POLICY_HAS_ORG, POLICY_HAS_OVERRIDES,
};
use crate::index::{Full, Ring, Windows};
use crate::key::Key;
use crate::quota::Totals;
use pgrx::pg_sys;

/// Result of looking at a subject's entry under its lock.
pub enum Seen<R> {
    Missing,
    Found(R),
    /// The entry counts its day and month in another time zone than its tenant's now: its totals
    /// must be read again from the ledger (`Shared::rezone_begin`, `Shared::rezone_end`).
    Moved,
}

impl Windows for Shared {
    fn windows(&self, zone: u16, unix_us: i64) -> (i32, i32) {
        let (d, m) = self.windows_at(zone, unix_us);
        (d.clamp(0, i32::MAX as i64) as i32, m.clamp(0, i32::MAX as i64) as i32)
    }
}

impl Shared {
    /// The partition of `key`, locked in `mode`, as a ring. Only valid while the guard lives.
    fn ring<'g>(&self, part: usize, _g: &'g mut PartGuard) -> Ring<'g> {
        let slots =
            unsafe { std::slice::from_raw_parts_mut(self.slots.add(part * self.slots_per_part), self.slots_per_part) };
        let live = unsafe { &mut (*self.header).part_live[part] };
        Ring::new(slots, live, self.part_cap, NPARTS)
    }

    /// Runs `f` on the subject's entry under its partition lock (rolling its windows to `now`).
    pub fn with_entry<R>(&self, key: &Key, db: u32, now: i64, f: impl FnOnce(&mut Slot) -> R) -> Seen<R> {
        self.entry(key, db, None, now, f)
    }

    /// The same for a caller that knows the tenant's time zone: `Seen::Moved` when the entry
    /// counts in another one and can switch now (it has no expired charge still unwritten; one
    /// that has keeps its zone until they are written, at most about a second).
    pub fn with_entry_in<R>(&self, key: &Key, db: u32, zone: u16, now: i64, f: impl FnOnce(&mut Slot) -> R) -> Seen<R> {
        self.entry(key, db, Some(zone), now, f)
    }

    fn entry<R>(&self, key: &Key, db: u32, zone: Option<u16>, now: i64, f: impl FnOnce(&mut Slot) -> R) -> Seen<R> {
        let part = Ring::part_of(key, NPARTS);
        let mut g = self.lock(part, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut ring = self.ring(part, &mut g);
        match ring.entry(key, db) {
            None => Seen::Missing,
            Some(s) if zone.is_some_and(|z| s.moved(z)) => Seen::Moved,
            Some(s) => {
                s.roll(now, self);
                s.last_used = now;
                Seen::Found(f(s))
            }
        }
    }

    /// First half of moving an entry to its tenant's new time zone: marks it, when it has moved
    /// and can (`Seen::Found(true)`). The caller, holding the subject's ledger lock exclusively
    /// (no recorder commits meanwhile), reads the totals of the new zone's windows from the
    /// ledger and calls `rezone_end`.
    pub fn rezone_begin(&self, key: &Key, db: u32, zone: u16, now: i64) -> Seen<bool> {
        self.with_entry(key, db, now, |s| s.rezone_begin(zone))
    }

    /// Second half: the entry takes the committed totals read from the ledger for the windows of
    /// `zone` at `now`, and keeps what it holds and its rate states. False (nothing changed) when
    /// a reservation expired meanwhile: its charge may be missing from what was read.
    pub fn rezone_end(&self, key: &Key, db: u32, zone: u16, committed: Totals, now: i64) -> bool {
        matches!(
            self.with_entry(key, db, now, |s| s.rezone_end(zone, committed, now, self)),
            Seen::Found(true)
        )
    }

    /// The all-or-nothing step (`Slot::admit`) under the subject's partition lock; for a subject
    /// of an organisation, under the locks of both entries' partitions at once, taken in
    /// ascending partition order (once when they share one): every backend that holds two
    /// partition locks took them in that order, so none waits for another in a cycle. `check`
    /// sees the organisation's totals too, and an admission holds on both entries. `after` runs
    /// under the same locks on both entries once the admission is held (to mark alerts).
    #[allow(clippy::too_many_arguments)]
    pub fn admit<V, A>(
        &self,
        key: &Key,
        org: Option<&Key>,
        db: u32,
        now: i64,
        zone: u16,
        stamp: Option<PolicyStamp>,
        check: impl FnOnce(&State, Option<&Totals>) -> (V, Option<Grant>),
        after: impl FnOnce(&Admitted<V>, &mut Slot, Option<&mut Slot>) -> A,
    ) -> Seen<(Admitted<V>, A)> {
        let Some(org) = org else {
            return self.with_entry_in(key, db, zone, now, |s| {
                let a = s.admit(stamp, |st| check(st, None));
                let extra = after(&a, s, None);
                (a, extra)
            });
        };
        let (ps, po) = (Ring::part_of(key, NPARTS), Ring::part_of(org, NPARTS));
        let mut first = self.lock(ps.min(po), pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut second = (ps != po).then(|| self.lock(ps.max(po), pg_sys::LWLockMode::LW_EXCLUSIVE));
        // Raw pointers to the two entries (never the same slot: the keys differ), valid while
        // both locks are held and nothing is inserted or removed.
        let mut find = |part: usize, k: &Key| -> Option<*mut Slot> {
            let g = match second.as_mut() {
                Some(g2) if part != ps.min(po) => g2,
                _ => &mut first,
            };
            let mut ring = self.ring(part, g);
            ring.find(k, db).map(|i| ring.get_mut(i) as *mut Slot)
        };
        let (Some(s), Some(o)) = (find(ps, key), find(po, org)) else {
            return Seen::Missing;
        };
        let (s, o) = unsafe { (&mut *s, &mut *o) };
        for e in [&*s, &*o] {
            if e.moved(zone) {
                return Seen::Moved;
            }
        }
        for e in [&mut *s, &mut *o] {
            e.roll(now, self);
            e.last_used = now;
        }
        let org_totals = o.totals;
        let a = s.admit(stamp, |st| check(st, Some(&org_totals)));
        if let Some(h) = a.held {
            o.hold(&h);
        }
        let extra = after(&a, s, Some(o));
        Seen::Found((a, extra))
    }

    /// Runs `f` on the totals and alert marks of an entry, if it is there.
    pub fn with_marks<R>(&self, key: &Key, db: u32, now: i64, f: impl FnOnce(&Totals, &mut u8) -> R) -> Option<R> {
        match self.with_entry(key, db, now, |s| f(&s.totals, &mut s.alert_marks)) {
            Seen::Found(r) => Some(r),
            _ => None,
        }
    }

    /// Where the subject's policy came from, if its entry knows (shared lock).
    pub fn peek_policy(&self, key: &Key, db: u32) -> Option<PolicyStamp> {
        let part = Ring::part_of(key, NPARTS);
        let mut g = self.lock(part, pg_sys::LWLockMode::LW_SHARED);
        let ring = self.ring(part, &mut g);
        ring.find(key, db).map(|i| ring.get(i).policy())
    }

    /// Installs a subject's totals read from the ledger for the windows of `zone` at `now`.
    /// Evicts the least recently used entry without open reservations when the partition is
    /// full (with `evict_busy`, even one whose rate buckets are not full again); fails when none
    /// can be evicted.
    pub fn install(
        &self,
        key: &Key,
        db: u32,
        zone: u16,
        totals: Totals,
        now: i64,
        evict_busy: bool,
    ) -> Result<(), Full> {
        let slot = Slot::new(*key, db, zone, totals, now, self);
        let part = Ring::part_of(key, NPARTS);
        let evicted = {
            let mut g = self.lock(part, pg_sys::LWLockMode::LW_EXCLUSIVE);
            self.ring(part, &mut g)
                .insert(slot, now.saturating_mul(1_000), evict_busy)?
        };
        if evicted {
            self.bump(Stat::Evictions);
        }
        Ok(())
    }

    /// Applies `effects` to the subject's entry under one lock. Never errors: it runs inside
    /// commit callbacks. A missing entry needs nothing: it is rebuilt from the ledger, which
    /// already holds what the effects describe.
    pub fn settle(&self, key: &Key, db: u32, now: i64, effects: &[Effect]) {
        let _ = self.with_entry(key, db, now, |s| {
            for e in effects {
                s.apply(e, now, self);
            }
        });
    }

    /// Marks an entry's totals as possibly behind the ledger (`Slot::mark_stale`), if it is there.
    /// Never errors: it runs inside commit and abort callbacks.
    pub fn mark_stale(&self, key: &Key, db: u32) {
        let part = Ring::part_of(key, NPARTS);
        let mut g = self.lock(part, pg_sys::LWLockMode::LW_EXCLUSIVE);
        if let Some(s) = self.ring(part, &mut g).entry(key, db) {
            s.mark_stale();
        }
    }

    /// Removes every entry of database `db` (a new installation of the extension there).
    pub fn remove_database_entries(&self, db: u32) -> usize {
        (0..NPARTS)
            .map(|p| {
                let mut g = self.lock(p, pg_sys::LWLockMode::LW_EXCLUSIVE);
                self.ring(p, &mut g).remove_db(db)
            })
            .sum()
    }

    /// Sum of live entries (takes each partition lock in shared mode, one at a time).
    pub fn entries_in_use(&self) -> i64 {
        (0..NPARTS)
            .map(|p| {
                let mut g = self.lock(p, pg_sys::LWLockMode::LW_SHARED);
                self.ring(p, &mut g).live() as i64
            })
            .sum()
    }
}
