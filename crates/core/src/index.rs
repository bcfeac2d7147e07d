//! The entries of the shared-memory index of the ledger, and the hash table that holds them.
//!
//! The extension keeps one entry per (database, tenant, subject) in shared memory, split into
//! partitions that each have a lock. This module is everything about them that does not need a
//! server: the entry (`Slot`, a fixed-size `repr(C)` record), how its totals move (`Effect`,
//! windows rolling forward, admission holds), and one partition's table (`Ring`: linear probing
//! with backward-shift deletion, least-recently-used eviction). The extension maps the memory,
//! takes the locks and supplies the calendar (`Windows`).

use crate::admission::State;
use crate::key::Key;
use crate::quota::Totals;

/// One subject's entry: calendar totals, rate states and where its policy comes from. 184 bytes.
/// An organisation's entry (`Key::org`) has the same shape: it uses only its totals and expiry
/// fields.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
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
    /// Subject stamp at which `profile_id` and `policy_flags` were read (0 = never).
    pub policy_stamp: u64,
    pub policy_flags: u8,
    /// The money alerts raised in the current day and month (`alerts::mark` bits).
    pub alert_marks: u8,
    /// The time zone (a number the extension gives each zone) of `day`, `month` and the totals.
    pub zone: u16,
    /// Expired reservations of this subject whose charge is counted in `totals` but not yet
    /// written to the ledger: the entry cannot be evicted while this is not zero.
    pub unflushed: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 184);

/// `policy_flags` bits.
pub const POLICY_ACTIVE: u8 = 1;
pub const POLICY_HAS_OVERRIDES: u8 = 2;
/// The subject belongs to an organisation (its policy is read from its row, which names it).
pub const POLICY_HAS_ORG: u8 = 8;
/// Set while a backend re-reads the entry's totals for its tenant's new time zone; an expiry
/// clears it (its charge would be missing from what was read).
pub const REZONING: u8 = 4;
/// The ledger holds rows the totals may lack (committed, or rolled back, by a transaction that
/// wrote the ledger directly): the next caller that knows the zone reads the totals again, as on
/// a change of time zone. Marking clears `REZONING`, so that a re-read begun before the mark
/// installs nothing.
pub const STALE: u8 = 16;
/// The bits that are the entry's own, not its policy's.
const ENTRY_BITS: u8 = REZONING | STALE;

/// The calendar of the entries: the day and month (as stored in an entry, counted from the epoch
/// in the entry's time zone) that contain an instant.
pub trait Windows {
    fn windows(&self, zone: u16, unix_us: i64) -> (i32, i32);
}

/// Where a subject's policy comes from, as stored in its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyStamp {
    pub stamp: u64,
    pub profile_id: i32,
    pub flags: u8,
}

/// A change to an entry, applied when a transaction commits or a reservation ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A committed ledger row at `at` (`cost` in micro-units, 0 when it has none).
    Row {
        at: i64,
        requests: i64,
        input: i64,
        output: i64,
        cost: i64,
    },
    /// A reservation's hold ends (settled or released): its request, tokens and cost estimate.
    ReleaseHold { tokens: i64, cost: i64 },
    /// A reservation expired: its hold becomes a charge of one request, `charged` tokens and
    /// `cost_charged` micro-units.
    Charge {
        tokens_held: i64,
        cost_held: i64,
        charged: i64,
        cost_charged: i64,
    },
    /// This many expired charges reached the ledger.
    Flushed(u32),
}

/// What an admission holds until its reservation is settled, released or expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub tokens: i64,
    /// The cost estimate, in micro-units (0 when no budget applies).
    pub cost: i64,
    pub expires_at: i64,
}

/// What an admitting check stores: the new rate states, and what to hold (if anything).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub tat: [i64; 4],
    pub hold: Option<Hold>,
}

/// What an admission did to an entry.
pub struct Admitted<V> {
    pub verdict: V,
    /// The check admitted (and the hold, if any, is held).
    pub admitted: bool,
    /// What it holds.
    pub held: Option<Hold>,
    pub totals: Totals,
    pub next_expiry: i64,
}

impl Effect {
    /// A ledger row at `at` that takes back one request charged with `tokens` and `cost` (an
    /// expired reservation's charge, replaced by its late record).
    pub fn taken_back(at: i64, tokens: i64, cost: i64) -> Effect {
        Effect::Row {
            at,
            requests: -1,
            input: -tokens,
            output: 0,
            cost: -cost,
        }
    }
}

impl Slot {
    /// A new entry with the committed totals read from the ledger for the windows of `zone` at `now`.
    pub fn new(key: Key, db: u32, zone: u16, totals: Totals, now: i64, w: &impl Windows) -> Slot {
        let (day, month) = w.windows(zone, now);
        Slot {
            key,
            db,
            last_used: now,
            day,
            month,
            zone,
            totals,
            ..Slot::default()
        }
    }

    /// Nothing is lost when this entry goes: no open reservation, no unwritten charge (its totals
    /// come back from the ledger).
    pub fn is_evictable(&self) -> bool {
        let t = &self.totals;
        !self.key.is_empty() && t.held_requests == 0 && t.held_tokens == 0 && t.held_cost == 0 && self.unflushed == 0
    }

    /// Every rate bucket is full again at `now_ns`: evicting loses no rate state either.
    pub fn is_idle(&self, now_ns: i64) -> bool {
        self.tat.iter().all(|t| crate::rate::is_idle(*t, now_ns))
    }

    /// Moves the windows forward to `now` (a new day or month starts at zero).
    pub fn roll(&mut self, now: i64, w: &impl Windows) {
        let (d, m) = w.windows(self.zone, now);
        self.roll_to(d, m);
    }

    /// Moves the windows forward to day `d` and month `m`; never backwards.
    fn roll_to(&mut self, d: i32, m: i32) {
        let t = &mut self.totals;
        if d > self.day {
            self.day = d;
            (t.day_requests, t.day_input, t.day_output, t.day_cost) = (0, 0, 0, 0);
            self.alert_marks &= !crate::alerts::DAY_MARKS;
        }
        if m > self.month {
            self.month = m;
            (t.month_requests, t.month_input, t.month_output, t.month_cost) = (0, 0, 0, 0);
            self.alert_marks &= !crate::alerts::MONTH_MARKS;
        }
    }

    /// Adds a ledger row (at `at`; negative amounts for a reversal) to the windows it falls in.
    /// A row of a window that has passed changes nothing; one of a later window rolls to it.
    pub fn add_row(&mut self, at: i64, [requests, input, output, cost]: [i64; 4], w: &impl Windows) {
        let (d, m) = w.windows(self.zone, at);
        self.roll_to(d, m);
        let t = &mut self.totals;
        if d == self.day {
            t.day_requests = t.day_requests.saturating_add(requests);
            t.day_input = t.day_input.saturating_add(input);
            t.day_output = t.day_output.saturating_add(output);
            t.day_cost = t.day_cost.saturating_add(cost);
        }
        if m == self.month {
            t.month_requests = t.month_requests.saturating_add(requests);
            t.month_input = t.month_input.saturating_add(input);
            t.month_output = t.month_output.saturating_add(output);
            t.month_cost = t.month_cost.saturating_add(cost);
        }
    }

    fn release_hold(&mut self, tokens: i64, cost: i64) {
        let t = &mut self.totals;
        t.held_requests = (t.held_requests - 1).max(0);
        t.held_tokens = t.held_tokens.saturating_sub(tokens).max(0);
        t.held_cost = t.held_cost.saturating_sub(cost).max(0);
    }

    /// Applies one effect at `now`.
    pub fn apply(&mut self, e: &Effect, now: i64, w: &impl Windows) {
        match *e {
            Effect::Row {
                at,
                requests,
                input,
                output,
                cost,
            } => self.add_row(at, [requests, input, output, cost], w),
            Effect::ReleaseHold { tokens, cost } => self.release_hold(tokens, cost),
            Effect::Charge {
                tokens_held,
                cost_held,
                charged,
                cost_charged,
            } => {
                // An expired reservation: its request and (unless lenient) its estimates move from
                // held to used, to be written to the ledger by the flusher.
                self.release_hold(tokens_held, cost_held);
                self.add_row(now, [1, charged, 0, cost_charged], w);
                self.unflushed = self.unflushed.saturating_add(1);
                self.policy_flags &= !REZONING;
            }
            Effect::Flushed(n) => self.unflushed = self.unflushed.saturating_sub(n),
        }
    }

    /// The all-or-nothing step of an admission: `check` decides on the totals and rate states and,
    /// if it admits (returns a grant), the new rate states are stored and the grant's hold (one
    /// request, its tokens and its cost estimate) is held. `stamp` records where the subject's
    /// policy came from.
    pub fn admit<V>(
        &mut self,
        stamp: Option<PolicyStamp>,
        check: impl FnOnce(&State) -> (V, Option<Grant>),
    ) -> Admitted<V> {
        if let Some(p) = stamp {
            if p.stamp >= self.policy_stamp {
                self.policy_stamp = p.stamp;
                self.profile_id = p.profile_id;
                self.policy_flags = p.flags | (self.policy_flags & ENTRY_BITS);
            }
        }
        let (verdict, grant) = check(&State {
            totals: self.totals,
            tat: self.tat,
        });
        if let Some(g) = grant {
            self.tat = g.tat;
            if let Some(h) = g.hold {
                self.hold(&h);
            }
        }
        Admitted {
            verdict,
            admitted: grant.is_some(),
            held: grant.and_then(|g| g.hold),
            totals: self.totals,
            next_expiry: self.next_expiry,
        }
    }

    /// Holds one admitted request, its tokens and its cost estimate until `h.expires_at` (on the
    /// subject's entry by `admit`; on its organisation's by the extension, in the same step).
    pub fn hold(&mut self, h: &Hold) {
        let t = &mut self.totals;
        t.held_requests = t.held_requests.saturating_add(1);
        t.held_tokens = t.held_tokens.saturating_add(h.tokens);
        t.held_cost = t.held_cost.saturating_add(h.cost.max(0));
        if self.next_expiry == 0 || h.expires_at < self.next_expiry {
            self.next_expiry = h.expires_at;
        }
    }

    /// The policy stamp as others may see it (without the rezoning mark).
    pub fn policy(&self) -> PolicyStamp {
        PolicyStamp {
            stamp: self.policy_stamp,
            profile_id: self.profile_id,
            flags: self.policy_flags & !ENTRY_BITS,
        }
    }

    /// The entry must read its totals again before a caller that counts in `zone` uses it: it
    /// counts in another zone, or is marked `STALE`, and no expired charge is still unwritten.
    pub fn moved(&self, zone: u16) -> bool {
        (self.zone != zone || self.policy_flags & STALE != 0) && self.unflushed == 0
    }

    /// Marks the totals as possibly behind the ledger (see `STALE`).
    pub fn mark_stale(&mut self) {
        self.policy_flags = (self.policy_flags | STALE) & !REZONING;
    }

    /// First half of moving the entry to its tenant's new time zone (or of reading a `STALE`
    /// entry's totals again): marks it when it has `moved` and can move now.
    pub fn rezone_begin(&mut self, zone: u16) -> bool {
        let start = self.moved(zone);
        if start {
            self.policy_flags |= REZONING;
        }
        start
    }

    /// Second half: takes the committed totals read from the ledger for the windows of `zone` at
    /// `now`, keeping what is held and the rate states. False (nothing changed) when an expiry
    /// came in between: its charge may be missing from what was read.
    pub fn rezone_end(&mut self, zone: u16, committed: Totals, now: i64, w: &impl Windows) -> bool {
        if self.policy_flags & REZONING == 0 || self.unflushed != 0 {
            return false;
        }
        self.policy_flags &= !ENTRY_BITS;
        self.totals = Totals {
            held_requests: self.totals.held_requests,
            held_tokens: self.totals.held_tokens,
            held_cost: self.totals.held_cost,
            ..committed
        };
        let (day, month) = w.windows(zone, now);
        (self.zone, self.day, self.month) = (zone, day, month);
        true
    }
}

/// Why an entry could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Every entry of the partition holds a reservation or an unwritten charge.
    NothingEvictable,
}

/// One partition of the index: a ring of slots with linear probing and backward-shift deletion
/// (no tombstones: every probe chain stays unbroken), holding at most `cap` live entries.
pub struct Ring<'a> {
    slots: &'a mut [Slot],
    live: &'a mut u32,
    cap: usize,
    /// The number of partitions: a key's partition is `key.hi % parts`, so its home within the
    /// partition uses the rest of the bits.
    parts: u64,
}

impl<'a> Ring<'a> {
    pub fn new(slots: &'a mut [Slot], live: &'a mut u32, cap: usize, parts: usize) -> Ring<'a> {
        debug_assert!(cap < slots.len(), "a ring needs at least one empty slot");
        Ring {
            slots,
            live,
            cap,
            parts: parts.max(1) as u64,
        }
    }

    /// The partition of `key` among `parts`.
    pub fn part_of(key: &Key, parts: usize) -> usize {
        (key.hi % parts.max(1) as u64) as usize
    }

    fn home(&self, key: &Key) -> usize {
        ((key.hi / self.parts) ^ key.lo) as usize % self.slots.len()
    }

    pub fn live(&self) -> u32 {
        *self.live
    }

    pub fn find(&self, key: &Key, db: u32) -> Option<usize> {
        let n = self.slots.len();
        let mut i = self.home(key);
        for _ in 0..n {
            let s = &self.slots[i];
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

    pub fn get(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Slot {
        &mut self.slots[i]
    }

    /// The entry of (`key`, `db`), if present.
    pub fn entry(&mut self, key: &Key, db: u32) -> Option<&mut Slot> {
        self.find(key, db).map(|i| &mut self.slots[i])
    }

    /// Removes the entry at `at`, shifting later members of its probe chain back.
    pub fn remove_at(&mut self, at: usize) {
        let n = self.slots.len();
        let mut hole = at;
        let mut j = (at + 1) % n;
        while !self.slots[j].key.is_empty() {
            let home = self.home(&self.slots[j].key);
            if (j + n - home) % n >= (j + n - hole) % n {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
            j = (j + 1) % n;
        }
        self.slots[hole] = Slot::default();
        *self.live -= 1;
    }

    /// Removes every entry of database `db`; returns how many.
    pub fn remove_db(&mut self, db: u32) -> usize {
        let mut removed = 0;
        let mut i = 0;
        // A removal shifts later members of a chain back into `i` (look at it again), or wraps
        // one from the front to the end (visited later).
        while i < self.slots.len() {
            let s = &self.slots[i];
            if !s.key.is_empty() && s.db == db {
                self.remove_at(i);
                removed += 1;
            } else {
                i += 1;
            }
        }
        removed
    }

    /// The least recently used entry that can be evicted at `now_ns`: one with idle rate buckets
    /// first (nothing lost at all), else, with `evict_busy`, any without reservations.
    fn victim(&self, now_ns: i64, evict_busy: bool) -> Option<usize> {
        let pick = |ok: &dyn Fn(&Slot) -> bool| {
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| ok(s))
                .min_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i)
        };
        pick(&|s| s.is_evictable() && s.is_idle(now_ns)).or_else(|| {
            if evict_busy {
                pick(&Slot::is_evictable)
            } else {
                None
            }
        })
    }

    /// Inserts `slot` unless its key is present (`Ok(false)`). When the ring holds `cap` entries,
    /// the least recently used evictable one goes first (`Ok(true)`).
    pub fn insert(&mut self, slot: Slot, now_ns: i64, evict_busy: bool) -> Result<bool, Full> {
        if self.find(&slot.key, slot.db).is_some() {
            return Ok(false);
        }
        let mut evicted = false;
        if *self.live as usize >= self.cap {
            let v = self.victim(now_ns, evict_busy).ok_or(Full::NothingEvictable)?;
            self.remove_at(v);
            evicted = true;
        }
        let n = self.slots.len();
        let mut i = self.home(&slot.key);
        while !self.slots[i].key.is_empty() {
            i = (i + 1) % n;
        }
        self.slots[i] = slot;
        *self.live += 1;
        Ok(evicted)
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const DAY_US: i64 = 86_400_000_000;

    /// UTC days, and 30-day "months": enough to tell windows apart.
    struct Days;
    impl Windows for Days {
        fn windows(&self, _zone: u16, unix_us: i64) -> (i32, i32) {
            let d = unix_us.div_euclid(DAY_US) as i32;
            (d, d / 30)
        }
    }

    fn key(i: u64) -> Key {
        // Keys that crowd a few homes, so that chains wrap around and interleave.
        Key {
            hi: i % 5,
            lo: (i * 7) % 11 + 1,
        }
    }

    /// Checks that every live entry is reachable from its home without crossing an empty slot.
    fn chains_unbroken(r: &Ring) -> bool {
        let n = r.slots.len();
        r.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.key.is_empty())
            .all(|(i, s)| {
                let mut j = r.home(&s.key);
                while j != i {
                    if r.slots[j].key.is_empty() {
                        return false;
                    }
                    j = (j + 1) % n;
                }
                true
            })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64, u32),
        Hold(u64, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..40, 0u32..2).prop_map(|(k, d)| Op::Insert(k, d)),
            (0u64..40, 0u32..2).prop_map(|(k, d)| Op::Remove(k, d)),
            (0u64..40, 0u32..2).prop_map(|(k, d)| Op::Hold(k, d)),
        ]
    }

    proptest! {
        /// Any sequence of inserts, removals and holds leaves the ring equal to a map of what was
        /// inserted and not removed or evicted; only entries without holds are evicted, the least
        /// recently used first; and every chain stays unbroken.
        #[test]
        fn the_ring_is_a_map(ops in proptest::collection::vec(op(), 1..300), len in 8usize..24) {
            let mut slots = vec![Slot::default(); len];
            let mut live = 0u32;
            let cap = len * 9 / 10;
            let mut model: HashMap<(Key, u32), (i64, bool)> = HashMap::new();
            let mut ring = Ring::new(&mut slots, &mut live, cap, 4);
            for (t, op) in ops.into_iter().enumerate() {
                let now = t as i64;
                match op {
                    Op::Insert(k, db) => {
                        let mut s = Slot::new(key(k), db, 0, Totals::default(), now, &Days);
                        s.totals.day_requests = k as i64;
                        let present = model.contains_key(&(key(k), db));
                        let before = model.clone();
                        match ring.insert(s, now * 1000, true) {
                            Ok(evicted) => {
                                prop_assert!(!present || !evicted);
                                if !present {
                                    if evicted {
                                        // The evicted entry was the least recently inserted one without a hold.
                                        let gone: Vec<_> = before.iter().filter(|(k, _)| ring.find(&k.0, k.1).is_none()).collect();
                                        prop_assert_eq!(gone.len(), 1);
                                        let (gk, (gt, held)) = gone[0];
                                        prop_assert!(!held);
                                        prop_assert!(before.values().filter(|(_, h)| !h).all(|(t2, _)| t2 >= gt));
                                        model.remove(&gk.clone());
                                    }
                                    model.insert((key(k), db), (now, false));
                                }
                            }
                            Err(Full::NothingEvictable) => {
                                prop_assert!(!present);
                                prop_assert!(model.len() >= cap && model.values().all(|(_, h)| *h));
                            }
                        }
                    }
                    Op::Remove(k, db) => {
                        if let Some(i) = ring.find(&key(k), db) {
                            prop_assert!(model.remove(&(key(k), db)).is_some());
                            ring.remove_at(i);
                        } else {
                            prop_assert!(!model.contains_key(&(key(k), db)));
                        }
                    }
                    Op::Hold(k, db) => {
                        if let Some(s) = ring.entry(&key(k), db) {
                            s.totals.held_requests += 1;
                            model.get_mut(&(key(k), db)).unwrap().1 = true;
                        }
                    }
                }
                prop_assert!(chains_unbroken(&ring));
                prop_assert_eq!(ring.live() as usize, model.len());
                prop_assert!(model.len() <= cap);
                for (k, db) in model.keys() {
                    let i = ring.find(k, *db);
                    prop_assert!(i.is_some());
                    let s = ring.get(i.unwrap());
                    prop_assert_eq!(s.totals.day_requests as u64 % 5, k.hi);
                }
            }
        }
    }

    #[test]
    fn a_full_ring_prefers_an_idle_victim_and_keeps_busy_rate_state_unless_told() {
        let mut slots = vec![Slot::default(); 4];
        let mut live = 0u32;
        let mut ring = Ring::new(&mut slots, &mut live, 2, 1);
        let mut busy = Slot::new(key(1), 0, 0, Totals::default(), 1, &Days);
        busy.tat = [5_000, 0, 0, 0]; // its bucket refills at 5 µs
        ring.insert(busy, 0, false).unwrap();
        ring.insert(Slot::new(key(2), 0, 0, Totals::default(), 2, &Days), 0, false)
            .unwrap();
        // The older entry is busy: the idle one goes.
        assert_eq!(
            ring.insert(Slot::new(key(3), 0, 0, Totals::default(), 3, &Days), 0, false),
            Ok(true)
        );
        assert!(ring.find(&key(1), 0).is_some() && ring.find(&key(2), 0).is_none());
        // Now both are busy or newer; without evict_busy the busy one stays, so key(3) goes.
        ring.get_mut(ring.find(&key(3), 0).unwrap()).totals.held_requests = 1;
        assert_eq!(
            ring.insert(Slot::new(key(4), 0, 0, Totals::default(), 4, &Days), 0, false),
            Err(Full::NothingEvictable)
        );
        assert_eq!(
            ring.insert(Slot::new(key(4), 0, 0, Totals::default(), 4, &Days), 0, true),
            Ok(true)
        );
        assert!(ring.find(&key(1), 0).is_none() && ring.find(&key(3), 0).is_some());
    }

    #[test]
    fn rows_count_in_their_windows_and_windows_roll_forward_only() {
        let mut s = Slot::new(key(1), 0, 0, Totals::default(), 40 * DAY_US, &Days);
        let day = |s: &Slot| (s.totals.day_input, s.totals.day_cost);
        let month = |s: &Slot| (s.totals.month_input, s.totals.month_cost);
        s.add_row(40 * DAY_US + 5, [1, 10, 3, 700], &Days);
        assert_eq!((day(&s), month(&s)), ((10, 700), (10, 700)));
        // A row of an earlier day of the same month counts in the month only.
        s.add_row(35 * DAY_US, [1, 7, 0, 50], &Days);
        assert_eq!((day(&s), month(&s)), ((10, 700), (17, 750)));
        // A row of an earlier month counts nowhere.
        s.add_row(10 * DAY_US, [1, 100, 0, 9], &Days);
        assert_eq!((day(&s), month(&s)), ((10, 700), (17, 750)));
        // The next day starts at zero, the month goes on; rolling never goes back.
        s.alert_marks = crate::alerts::DAY_MARKS | crate::alerts::MONTH_MARKS;
        s.roll(41 * DAY_US, &Days);
        assert_eq!((day(&s), month(&s), s.totals.day_requests), ((0, 0), (17, 750), 0));
        assert_eq!(
            s.alert_marks,
            crate::alerts::MONTH_MARKS,
            "a new day clears the day's alerts"
        );
        s.roll(40 * DAY_US, &Days);
        assert_eq!(s.day, 41);
        // A new month starts at zero too.
        s.add_row(60 * DAY_US, [1, 4, 4, 1], &Days);
        assert_eq!((day(&s), month(&s), s.totals.month_output), ((4, 1), (4, 1), 4));
        assert_eq!(s.alert_marks, 0, "and a new month the month's");
    }

    #[test]
    fn an_admission_holds_only_when_admitted_and_an_expiry_charges_what_it_held() {
        let mut s = Slot::new(key(1), 0, 0, Totals::default(), 0, &Days);
        let hold = Some(Hold {
            tokens: 50,
            cost: 3_000,
            expires_at: 900,
        });
        let a = s.admit(None, |_| ((), None));
        assert_eq!((a.totals.held_requests, a.next_expiry, a.held), (0, 0, None));
        let a = s.admit(None, |_| {
            (
                (),
                Some(Grant {
                    tat: [7, 0, 0, 0],
                    hold,
                }),
            )
        });
        assert_eq!(a.held, hold);
        assert_eq!(
            (
                a.totals.held_requests,
                a.totals.held_tokens,
                a.totals.held_cost,
                a.next_expiry,
                s.tat[0]
            ),
            (1, 50, 3_000, 900, 7)
        );
        assert!(!s.is_evictable());
        s.apply(
            &Effect::Charge {
                tokens_held: 50,
                cost_held: 3_000,
                charged: 50,
                cost_charged: 3_000,
            },
            100,
            &Days,
        );
        let t = s.totals;
        assert_eq!(
            (
                t.held_requests,
                t.held_tokens,
                t.held_cost,
                t.day_input,
                t.day_requests,
                t.day_cost,
                t.month_cost
            ),
            (0, 0, 0, 50, 1, 3_000, 3_000)
        );
        assert!(!s.is_evictable());
        s.apply(&Effect::Flushed(1), 100, &Days);
        assert!(s.is_evictable());
        // Releasing more than is held never goes below zero.
        s.apply(&Effect::ReleaseHold { tokens: 5, cost: 7 }, 100, &Days);
        assert_eq!(
            (s.totals.held_requests, s.totals.held_tokens, s.totals.held_cost),
            (0, 0, 0)
        );
    }

    #[test]
    fn an_older_policy_stamp_never_overwrites_a_newer_one() {
        let mut s = Slot::default();
        let p = |stamp, profile_id| {
            Some(PolicyStamp {
                stamp,
                profile_id,
                flags: POLICY_ACTIVE,
            })
        };
        s.admit(p(5, 1), |_| ((), None));
        s.admit(p(3, 2), |_| ((), None));
        assert_eq!((s.policy_stamp, s.profile_id), (5, 1));
        assert!(s.rezone_begin(1));
        s.admit(p(6, 3), |_| ((), None));
        assert_eq!(s.policy().flags, POLICY_ACTIVE, "the rezoning mark stays out of sight");
        assert_eq!(s.policy_flags & REZONING, REZONING, "and survives a new stamp");
    }

    #[test]
    fn a_rezone_keeps_holds_and_is_undone_by_an_expiry_in_between() {
        let mut s = Slot::new(key(1), 0, 0, Totals::default(), 0, &Days);
        s.admit(None, |_| {
            (
                (),
                Some(Grant {
                    tat: [0; 4],
                    hold: Some(Hold {
                        tokens: 9,
                        cost: 11,
                        expires_at: 1,
                    }),
                }),
            )
        });
        let committed = Totals {
            day_input: 70,
            month_input: 80,
            held_tokens: 999,
            held_cost: 999,
            ..Totals::default()
        };
        assert!(s.rezone_begin(3));
        assert!(s.rezone_end(3, committed, 0, &Days));
        assert_eq!(
            (
                s.zone,
                s.totals.day_input,
                s.totals.held_tokens,
                s.totals.held_requests,
                s.totals.held_cost
            ),
            (3, 70, 9, 1, 11)
        );
        // An expiry between the two halves voids the second.
        assert!(s.rezone_begin(4));
        s.apply(
            &Effect::Charge {
                tokens_held: 9,
                cost_held: 11,
                charged: 9,
                cost_charged: 11,
            },
            0,
            &Days,
        );
        assert!(!s.rezone_end(4, committed, 0, &Days));
        assert_eq!(s.zone, 3);
        // With the charge unwritten, it cannot start again.
        assert!(!s.rezone_begin(4));
    }

    #[test]
    fn a_stale_entry_reads_its_totals_again_in_its_own_zone_and_a_mark_in_between_voids_the_read() {
        let mut s = Slot::new(key(1), 0, 2, Totals::default(), 0, &Days);
        assert!(!s.moved(2));
        s.mark_stale();
        assert!(s.moved(2), "same zone, but stale");
        assert_eq!(s.policy().flags & STALE, 0, "the mark stays out of the policy");
        let committed = Totals {
            day_requests: 5,
            ..Totals::default()
        };
        assert!(s.rezone_begin(2));
        s.mark_stale();
        assert!(
            !s.rezone_end(2, committed, 0, &Days),
            "marked again while reading: read again"
        );
        assert!(s.moved(2));
        assert!(s.rezone_begin(2));
        assert!(s.rezone_end(2, committed, 0, &Days));
        assert!(!s.moved(2));
        assert_eq!(s.totals.day_requests, 5);
    }

    #[test]
    fn removing_a_database_leaves_every_other_entry_findable() {
        let mut slots = vec![Slot::default(); 64];
        let mut live = 0u32;
        let mut ring = Ring::new(&mut slots, &mut live, 57, 1);
        for i in 0..50u64 {
            let db = (i % 3) as u32;
            ring.insert(Slot::new(key(i), db, 0, Totals::default(), 0, &Days), 0, false)
                .unwrap();
        }
        assert_eq!(ring.remove_db(1), 17);
        assert_eq!(ring.live(), 33);
        for i in 0..50u64 {
            let db = (i % 3) as u32;
            assert_eq!(ring.find(&key(i), db).is_some(), db != 1, "key {i} of database {db}");
        }
    }
}
