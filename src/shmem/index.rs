//! The subject index: one entry per (database, tenant, subject) with its calendar totals (in its
//! tenant's time zone), rate states and where its policy comes from.
//!
//! Entries are split into `NPARTS` partitions, each a ring with linear probing and backward-shift
//! deletion, guarded by its own LWLock (tranche `control_plane_subjects_v1`). Nothing that can
//! raise an error runs while a partition lock is held.

use super::{PartGuard, Shared, Stat, NPARTS};
use crate::admission::State;
use crate::key::Key;
use crate::quota::Totals;
use pgrx::pg_sys;

/// One subject's entry: calendar totals, rate states and where its policy comes from. 160 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Slot {
    pub key: Key,
    pub db: u32,
    /// `profiles.id` of the subject's profile, valid while `policy_stamp` is current.
    pub profile_id: i32,
    pub last_used: i64,
    pub day: i32,
    pub month: i32,
    pub totals: Totals,
    /// No reservation of this subject expires before this instant (a hint; may be early).
    pub next_expiry: i64,
    /// GCRA theoretical arrival times, one per `admission::RATE_LIMITS` entry.
    pub tat: [i64; 4],
    /// Subject stamp (see `Shared::subject_stamp`) at which `profile_id` and `policy_flags` were
    /// read (0 = never).
    pub policy_stamp: u64,
    pub policy_flags: u16,
    /// The time zone (see `zones`) of `day`, `month` and the totals in them.
    pub zone: u16,
    /// Expired reservations of this subject whose charge is counted in `totals` but not yet
    /// written to the ledger: the entry cannot be evicted while this is not zero.
    pub unflushed: u32,
}

/// `policy_flags` bits.
pub const POLICY_ACTIVE: u16 = 1;
pub const POLICY_HAS_OVERRIDES: u16 = 2;
/// Set while a backend re-reads the entry's totals for its tenant's new time zone; an expiry
/// clears it (its charge would be missing from what was read).
const REZONING: u16 = 4;

/// Where a subject's policy comes from, as stored in its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyStamp {
    pub stamp: u64,
    pub profile_id: i32,
    pub flags: u16,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 160);

/// Result of looking at a subject's entry under its lock.
pub enum Seen<R> {
    Missing,
    Found(R),
    /// The entry counts its day and month in another time zone than its tenant's now: its totals
    /// must be read again from the ledger (`Shared::rezone_begin`, `Shared::rezone_end`).
    Moved,
}

/// A change to a subject's entry (see `Shared::settle`).
#[derive(Clone, Copy, Debug)]
pub enum Effect {
    /// A committed ledger row at `at`.
    Row {
        at: i64,
        requests: i64,
        input: i64,
        output: i64,
    },
    /// A reservation's hold ends (settled or released).
    ReleaseHold { tokens: i64 },
    /// A reservation expired: its hold becomes a charge of one request and `charged` tokens.
    Charge { tokens_held: i64, charged: i64 },
    /// This many expired charges reached the ledger.
    Flushed(u32),
}

/// What an admission holds until its reservation is settled, released or expires.
#[derive(Clone, Copy, Debug)]
pub struct Hold {
    pub tokens: i64,
    pub expires_at: i64,
}

/// What `admit` did.
pub struct Admitted<V> {
    pub verdict: V,
    pub totals: Totals,
    pub next_expiry: i64,
}

impl Shared {
    /// The day and month (as stored in an entry) of zone `zone` that contain `unix_us`.
    fn windows_of(&self, zone: u16, unix_us: i64) -> (i32, i32) {
        let (d, m) = self.windows_at(zone, unix_us);
        (d.clamp(0, i32::MAX as i64) as i32, m.clamp(0, i32::MAX as i64) as i32)
    }

    fn part_of(&self, key: &Key) -> usize {
        (key.hi % NPARTS as u64) as usize
    }

    fn home(&self, key: &Key) -> usize {
        ((key.hi / NPARTS as u64) ^ key.lo) as usize % self.slots_per_part
    }

    /// The partition's slots. Only valid while its lock is held.
    #[allow(clippy::mut_from_ref)]
    fn part_slots(&self, part: usize, _g: &PartGuard) -> &mut [Slot] {
        unsafe { std::slice::from_raw_parts_mut(self.slots.add(part * self.slots_per_part), self.slots_per_part) }
    }

    #[allow(clippy::mut_from_ref)]
    fn live(&self, part: usize, _g: &PartGuard) -> &mut u32 {
        unsafe { &mut (*self.header).part_live[part] }
    }

    fn find(&self, slots: &[Slot], key: &Key, db: u32) -> Option<usize> {
        let n = slots.len();
        let mut i = self.home(key);
        for _ in 0..n {
            let s = &slots[i];
            if s.key.is_empty() {
                return None;
            }
            if s.key == *key && s.db == db {
                return Some(i);
            }
            i = (i + 1) % n;
        }
        None
    }

    /// Backward-shift deletion: keeps every probe chain unbroken.
    fn remove_at(&self, slots: &mut [Slot], at: usize) {
        let n = slots.len();
        let mut hole = at;
        let mut j = (at + 1) % n;
        loop {
            if slots[j].key.is_empty() {
                break;
            }
            let home = self.home(&slots[j].key);
            if (j + n - home) % n >= (j + n - hole) % n {
                slots[hole] = slots[j];
                hole = j;
            }
            j = (j + 1) % n;
        }
        slots[hole] = Slot::default();
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
        let part = self.part_of(key);
        let g = self.lock(part, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = self.part_slots(part, &g);
        match self.find(slots, key, db) {
            None => Seen::Missing,
            Some(i) => {
                let s = &mut slots[i];
                if zone.is_some_and(|z| z != s.zone) && s.unflushed == 0 {
                    return Seen::Moved;
                }
                self.roll(s, now);
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
        self.with_entry(key, db, now, |s| {
            let start = s.zone != zone && s.unflushed == 0;
            if start {
                s.policy_flags |= REZONING;
            }
            start
        })
    }

    /// Second half: the entry takes the committed totals read from the ledger for the windows of
    /// `zone` at `now`, and keeps what it holds and its rate states. False (nothing changed) when
    /// a reservation expired meanwhile: its charge may be missing from what was read.
    pub fn rezone_end(&self, key: &Key, db: u32, zone: u16, committed: Totals, now: i64) -> bool {
        let (day, month) = self.windows_of(zone, now);
        matches!(
            self.with_entry(key, db, now, |s| {
                if s.policy_flags & REZONING == 0 || s.unflushed != 0 {
                    return false;
                }
                s.policy_flags &= !REZONING;
                s.totals = Totals {
                    held_requests: s.totals.held_requests,
                    held_tokens: s.totals.held_tokens,
                    ..committed
                };
                (s.zone, s.day, s.month) = (zone, day, month);
                true
            }),
            Seen::Found(true)
        )
    }

    /// The all-or-nothing step: `check` decides on the entry's totals and rate states and, if it
    /// admits (returns new rate states), the rate states are stored and `hold` (one request and
    /// its tokens) is held in the same critical section. `stamp` records where the subject's policy came from.
    #[allow(clippy::too_many_arguments)]
    pub fn admit<V>(
        &self,
        key: &Key,
        db: u32,
        now: i64,
        hold: Option<Hold>,
        zone: u16,
        stamp: Option<PolicyStamp>,
        check: impl FnOnce(&State) -> (V, Option<[i64; 4]>),
    ) -> Seen<Admitted<V>> {
        self.with_entry_in(key, db, zone, now, |s| {
            if let Some(p) = stamp {
                if p.stamp >= s.policy_stamp {
                    s.policy_stamp = p.stamp;
                    s.profile_id = p.profile_id;
                    s.policy_flags = p.flags | (s.policy_flags & REZONING);
                }
            }
            let (verdict, admitted) = check(&State {
                totals: s.totals,
                tat: s.tat,
            });
            if let Some(tat) = admitted {
                s.tat = tat;
                if let Some(h) = hold {
                    s.totals.held_requests = s.totals.held_requests.saturating_add(1);
                    s.totals.held_tokens = s.totals.held_tokens.saturating_add(h.tokens);
                    if s.next_expiry == 0 || h.expires_at < s.next_expiry {
                        s.next_expiry = h.expires_at;
                    }
                }
            }
            Admitted {
                verdict,
                totals: s.totals,
                next_expiry: s.next_expiry,
            }
        })
    }

    /// Where the subject's policy came from, if its entry knows (shared lock).
    pub fn peek_policy(&self, key: &Key, db: u32) -> Option<PolicyStamp> {
        let part = self.part_of(key);
        let g = self.lock(part, pg_sys::LWLockMode::LW_SHARED);
        let slots = self.part_slots(part, &g);
        self.find(slots, key, db).map(|i| {
            let s = &slots[i];
            PolicyStamp {
                stamp: s.policy_stamp,
                profile_id: s.profile_id,
                flags: s.policy_flags & !REZONING,
            }
        })
    }

    /// Installs a subject's totals read from the ledger for the windows of `zone` at `now`.
    /// Evicts the least recently used entry without open reservations when the partition is
    /// full; fails when none can be evicted.
    pub fn install(&self, key: &Key, db: u32, zone: u16, totals: Totals, now: i64, evict_busy: bool) -> Result<(), ()> {
        let (day, month) = self.windows_of(zone, now);
        let part = self.part_of(key);
        let g = self.lock(part, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = self.part_slots(part, &g);
        if self.find(slots, key, db).is_some() {
            return Ok(());
        }
        if *self.live(part, &g) as usize >= self.part_cap {
            // An entry without open reservations whose buckets are full again loses nothing when
            // evicted (its totals come back from the ledger). With evict_busy, the least recently
            // used entry without reservations goes even if its rate state is lost.
            let now_ns = now.saturating_mul(1_000);
            let free = |s: &Slot| {
                !s.key.is_empty() && s.totals.held_requests == 0 && s.totals.held_tokens == 0 && s.unflushed == 0
            };
            let idle = |s: &Slot| s.tat.iter().all(|t| crate::rate::is_idle(*t, now_ns));
            let pick = |ok: &dyn Fn(&Slot) -> bool| {
                slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| ok(s))
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(i, _)| i)
            };
            let mut victim = pick(&|s| free(s) && idle(s));
            if victim.is_none() && evict_busy {
                victim = pick(&free);
            }
            match victim {
                None => return Err(()),
                Some(v) => {
                    self.remove_at(slots, v);
                    *self.live(part, &g) -= 1;
                    self.bump(Stat::Evictions);
                }
            }
        }
        let n = slots.len();
        let mut i = self.home(key);
        while !slots[i].key.is_empty() {
            i = (i + 1) % n;
        }
        let s = Slot {
            key: *key,
            db,
            last_used: now,
            day,
            month,
            zone,
            totals,
            ..Slot::default()
        };
        slots[i] = s;
        *self.live(part, &g) += 1;
        Ok(())
    }

    /// Applies `effects` to the subject's entry under one lock. Never errors: it runs inside
    /// commit callbacks. A missing entry needs nothing: it is rebuilt from the ledger, which
    /// already holds what the effects describe.
    pub fn settle(&self, key: &Key, db: u32, now: i64, effects: &[Effect]) {
        let _ = self.with_entry(key, db, now, |s| {
            for e in effects {
                match *e {
                    Effect::Row {
                        at,
                        requests,
                        input,
                        output,
                    } => self.add_row(s, at, requests, input, output),
                    Effect::ReleaseHold { tokens } => release_hold(&mut s.totals, tokens),
                    Effect::Charge { tokens_held, charged } => {
                        // An expired reservation: its request and (unless lenient) its estimate
                        // move from held to used, to be written to the ledger by the flusher.
                        release_hold(&mut s.totals, tokens_held);
                        self.add_row(s, now, 1, charged, 0);
                        s.unflushed = s.unflushed.saturating_add(1);
                        s.policy_flags &= !REZONING;
                    }
                    Effect::Flushed(n) => s.unflushed = s.unflushed.saturating_sub(n),
                }
            }
        });
    }

    /// Sum of live entries (takes each partition lock in shared mode, one at a time).
    pub fn entries_in_use(&self) -> i64 {
        (0..NPARTS)
            .map(|p| {
                let g = self.lock(p, pg_sys::LWLockMode::LW_SHARED);
                *self.live(p, &g) as i64
            })
            .sum()
    }
}

impl Shared {
    /// Adds a ledger row (at `at`; negative amounts for a reversal) to the windows it falls in.
    fn add_row(&self, s: &mut Slot, at: i64, requests: i64, input: i64, output: i64) {
        let (d, m) = self.windows_of(s.zone, at);
        roll_to(s, d, m);
        let t = &mut s.totals;
        if d == s.day {
            t.day_requests = t.day_requests.saturating_add(requests);
            t.day_input = t.day_input.saturating_add(input);
            t.day_output = t.day_output.saturating_add(output);
        }
        if m == s.month {
            t.month_requests = t.month_requests.saturating_add(requests);
            t.month_input = t.month_input.saturating_add(input);
            t.month_output = t.month_output.saturating_add(output);
        }
    }

    /// Moves an entry's windows forward to `now` (a new day or month starts at zero).
    fn roll(&self, s: &mut Slot, now: i64) {
        let (d, m) = self.windows_of(s.zone, now);
        roll_to(s, d, m);
    }
}

fn release_hold(t: &mut Totals, tokens: i64) {
    t.held_requests = (t.held_requests - 1).max(0);
    t.held_tokens = (t.held_tokens.saturating_sub(tokens)).max(0);
}

/// Moves an entry's windows forward to day `d` and month `m`; never backwards.
fn roll_to(s: &mut Slot, d: i32, m: i32) {
    if d > s.day {
        s.day = d;
        s.totals.day_requests = 0;
        s.totals.day_input = 0;
        s.totals.day_output = 0;
    }
    if m > s.month {
        s.month = m;
        s.totals.month_requests = 0;
        s.totals.month_input = 0;
        s.totals.month_output = 0;
    }
}
