//! The shared-memory index: running totals per (database, tenant, subject) and open reservations.
//!
//! One region, sized at server start by `control_plane.max_subjects` and
//! `control_plane.max_reservations`, zeroed in place (never built on the stack):
//!
//! ```text
//! Header | Slot x (NPARTS * slots_per_part) | Resv x max_reservations
//! ```
//!
//! Subject slots are split into `NPARTS` partitions, each a ring with linear probing and
//! backward-shift deletion, guarded by its own LWLock (tranche `control_plane_subjects_v1`).
//! Reservation slots are claimed and settled with compare-and-swap on their state word, so a
//! reservation is settled exactly once.
//!
//! Everything here is an index of the ledger: a backend crash zeroes the region and the totals are
//! rebuilt from `control_plane.usage_events` on first sight.

use crate::admission::State;
use crate::calendar::{day_index, month_index};
use crate::error::{CpError, CpResult};
use crate::key::Key;
use crate::quota::Totals;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const NPARTS: usize = 64;
/// Buckets of the heavyweight locks that order ledger rebuilds against recorders.
pub const LOCK_BUCKETS: u32 = 128;
const MAGIC: u64 = 0x6370_7368_6d5f_7631;
const REGION: &CStr = c"control_plane_state_v1";
const TRANCHE: &CStr = c"control_plane_subjects_v1";
/// `AddinShmemInitLock` is `MainLWLockArray[21]` (lwlocknames.txt).
const ADDIN_SHMEM_INIT_LOCK: usize = 21;

/// Counters shown by `control_plane.stats`.
#[derive(Clone, Copy, Debug)]
#[repr(usize)]
pub enum Stat {
    Allowed,
    DeniedQuota,
    DeniedRate,
    DeniedConcurrency,
    DeniedModel,
    DeniedInactive,
    DeniedCapacity,
    Rebuilds,
    Evictions,
    Settled,
    Released,
    Expired,
}
pub const STAT_NAMES: [&str; 12] = [
    "admits_allowed",
    "denied_quota",
    "denied_rate",
    "denied_concurrency",
    "denied_model_or_feature",
    "denied_inactive",
    "denied_capacity",
    "ledger_rebuilds",
    "evictions",
    "reservations_settled",
    "reservations_released",
    "reservations_expired",
];

#[repr(C)]
pub struct Header {
    magic: u64,
    slots_per_part: u32,
    part_cap: u32,
    nres: u32,
    _pad: u32,
    /// Bumped after every committed change to profiles or subjects.
    pub policy_gen: AtomicU64,
    res_hint: AtomicU32,
    _pad2: u32,
    stats: [AtomicU64; STAT_NAMES.len()],
    /// Live entries per partition, guarded by the partition's lock.
    part_live: [u32; NPARTS],
}

/// One subject's entry: calendar totals, rate states and where its policy comes from. 160 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Slot {
    pub key: Key,
    pub db: u32,
    /// `profiles.id` of the subject's profile, valid when `policy_gen` is current.
    pub profile_id: i32,
    pub last_used: i64,
    pub day: i32,
    pub month: i32,
    pub totals: Totals,
    /// No reservation of this subject expires before this instant (a hint; may be early).
    pub next_expiry: i64,
    /// GCRA theoretical arrival times, one per `admission::RATE_LIMITS` entry.
    pub tat: [i64; 4],
    /// Policy generation at which `profile_id` and `policy_flags` were read (0 = never).
    pub policy_gen: u64,
    pub policy_flags: u32,
    pub _pad: u32,
}

/// `policy_flags` bits.
pub const POLICY_ACTIVE: u32 = 1;
pub const POLICY_HAS_OVERRIDES: u32 = 2;

/// Where a subject's policy comes from, as stored in its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyStamp {
    pub generation: u64,
    pub profile_id: i32,
    pub flags: u32,
}

const RES_FREE: u32 = 0;
const RES_CLAIMED: u32 = 1;
const RES_ACTIVE: u32 = 2;
const RES_SETTLING: u32 = 3;

/// One open reservation. 96 bytes. Fields other than `state` are written only by the process
/// that moved `state` to `RES_CLAIMED` or `RES_SETTLING`.
#[repr(C)]
pub struct Resv {
    state: AtomicU32,
    db: u32,
    id: [u8; 16],
    key: Key,
    tenant_fp: u64,
    tokens: i64,
    expires_at: i64,
    owner_pid: i32,
    _pad: u32,
    _reserved: [u64; 3],
}

const _: () = assert!(std::mem::size_of::<Slot>() == 160);
const _: () = assert!(std::mem::size_of::<Resv>() == 96);

struct Layout {
    slots_per_part: usize,
    part_cap: usize,
    nres: usize,
    slots_off: usize,
    res_off: usize,
    total: usize,
}

fn align64(x: usize) -> usize {
    (x + 63) & !63
}

impl Layout {
    fn from_gucs() -> Layout {
        let max_subjects = crate::gucs::MAX_SUBJECTS.get().max(1) as usize;
        let nres = crate::gucs::MAX_RESERVATIONS.get().max(1) as usize;
        let slots_per_part = ((max_subjects * 5 / 4).div_ceil(NPARTS)).max(32);
        let part_cap = slots_per_part * 9 / 10;
        let slots_off = align64(std::mem::size_of::<Header>());
        let res_off = align64(slots_off + NPARTS * slots_per_part * std::mem::size_of::<Slot>());
        let total = res_off + nres * std::mem::size_of::<Resv>();
        Layout {
            slots_per_part,
            part_cap,
            nres,
            slots_off,
            res_off,
            total,
        }
    }
}

pub struct Shared {
    header: *mut Header,
    slots: *mut Slot,
    resv: *mut Resv,
    locks: *mut pg_sys::LWLockPadded,
    slots_per_part: usize,
    part_cap: usize,
    nres: usize,
}

static mut SHARED: Option<Shared> = None;
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Installs the hooks. Called from `_PG_init` while shared_preload_libraries is processed.
pub fn init() {
    unsafe {
        PREV_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_hook);
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_hook);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request_hook() {
    unsafe {
        if let Some(prev) = PREV_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(Layout::from_gucs().total);
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), NPARTS as i32);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup_hook() {
    unsafe {
        if let Some(prev) = PREV_STARTUP {
            prev();
        }
        let l = Layout::from_gucs();
        let init_lock = ptr::addr_of_mut!((*pg_sys::MainLWLockArray.add(ADDIN_SHMEM_INIT_LOCK)).lock);
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(REGION.as_ptr(), l.total, &mut found) as *mut u8;
        if !found {
            ptr::write_bytes(base, 0, l.total);
            let h = base as *mut Header;
            (*h).magic = MAGIC;
            (*h).slots_per_part = l.slots_per_part as u32;
            (*h).part_cap = l.part_cap as u32;
            (*h).nres = l.nres as u32;
            (*h).policy_gen.store(1, Ordering::Relaxed);
        }
        let locks = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
        pg_sys::LWLockRelease(init_lock);
        SHARED = Some(Shared {
            header: base as *mut Header,
            slots: base.add(l.slots_off) as *mut Slot,
            resv: base.add(l.res_off) as *mut Resv,
            locks,
            slots_per_part: l.slots_per_part,
            part_cap: l.part_cap,
            nres: l.nres,
        });
    }
}

/// The shared state, or the "not preloaded" error.
pub fn shared() -> CpResult<&'static Shared> {
    #[allow(static_mut_refs)]
    let s = unsafe { SHARED.as_ref() };
    match s {
        Some(s) if unsafe { (*s.header).magic } == MAGIC => Ok(s),
        _ => Err(CpError::NotPreloaded),
    }
}

/// Exclusive hold of one partition's LWLock; released on drop. Nothing that can raise an ERROR
/// runs while it is held.
struct PartGuard {
    lock: *mut pg_sys::LWLock,
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        unsafe { pg_sys::LWLockRelease(self.lock) }
    }
}

/// Result of looking at a subject's entry under its lock.
pub enum Seen<R> {
    Missing,
    Found(R),
}

/// What `admit` did.
pub struct Admitted<V> {
    pub verdict: V,
    pub totals: Totals,
    pub next_expiry: i64,
}

fn day_of(unix_us: i64) -> i32 {
    day_index(unix_us).clamp(0, i32::MAX as i64) as i32
}

fn month_of(unix_us: i64) -> i32 {
    month_index(unix_us).clamp(0, i32::MAX as i64) as i32
}

impl Shared {
    fn header(&self) -> &Header {
        unsafe { &*self.header }
    }

    pub fn bump(&self, s: Stat) {
        self.header().stats[s as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn stat_values(&self) -> Vec<(&'static str, i64)> {
        let h = self.header();
        STAT_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, h.stats[i].load(Ordering::Relaxed) as i64))
            .collect()
    }

    pub fn policy_generation(&self) -> u64 {
        self.header().policy_gen.load(Ordering::Acquire)
    }

    pub fn bump_policy_generation(&self) {
        self.header().policy_gen.fetch_add(1, Ordering::AcqRel);
    }

    pub fn capacity(&self) -> (i64, i64, i64) {
        ((NPARTS * self.part_cap) as i64, self.nres as i64, NPARTS as i64)
    }

    fn part_of(&self, key: &Key) -> usize {
        (key.hi % NPARTS as u64) as usize
    }

    fn home(&self, key: &Key) -> usize {
        ((key.hi / NPARTS as u64) ^ key.lo) as usize % self.slots_per_part
    }

    fn lock(&self, part: usize, mode: pg_sys::LWLockMode::Type) -> PartGuard {
        let lock = unsafe { ptr::addr_of_mut!((*self.locks.add(part)).lock) };
        unsafe { pg_sys::LWLockAcquire(lock, mode) };
        PartGuard { lock }
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
        let part = self.part_of(key);
        let g = self.lock(part, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let slots = self.part_slots(part, &g);
        match self.find(slots, key, db) {
            None => Seen::Missing,
            Some(i) => {
                let s = &mut slots[i];
                roll(s, now);
                s.last_used = now;
                Seen::Found(f(s))
            }
        }
    }

    /// The all-or-nothing step: `check` decides on the entry's totals and rate states and, if it
    /// admits (returns new rate states), one request and `tokens` are held and the rate states
    /// stored in the same critical section. `stamp` records where the subject's policy came from.
    #[allow(clippy::too_many_arguments)]
    pub fn admit<V>(
        &self,
        key: &Key,
        db: u32,
        now: i64,
        tokens: i64,
        expires_at: i64,
        stamp: Option<PolicyStamp>,
        check: impl FnOnce(&State) -> (V, Option<[i64; 4]>),
    ) -> Seen<Admitted<V>> {
        self.with_entry(key, db, now, |s| {
            if let Some(p) = stamp {
                if p.generation >= s.policy_gen {
                    s.policy_gen = p.generation;
                    s.profile_id = p.profile_id;
                    s.policy_flags = p.flags;
                }
            }
            let (verdict, admitted) = check(&State {
                totals: s.totals,
                tat: s.tat,
            });
            if let Some(tat) = admitted {
                s.tat = tat;
                s.totals.held_requests = s.totals.held_requests.saturating_add(1);
                s.totals.held_tokens = s.totals.held_tokens.saturating_add(tokens);
                if s.next_expiry == 0 || expires_at < s.next_expiry {
                    s.next_expiry = expires_at;
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
                generation: s.policy_gen,
                profile_id: s.profile_id,
                flags: s.policy_flags,
            }
        })
    }

    /// Installs a subject's totals read from the ledger. Evicts the least recently used entry
    /// without open reservations when the partition is full; fails when none can be evicted.
    pub fn install(&self, key: &Key, db: u32, totals: Totals, now: i64, evict_busy: bool) -> Result<(), ()> {
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
            let free = |s: &Slot| !s.key.is_empty() && s.totals.held_requests == 0 && s.totals.held_tokens == 0;
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
            day: day_of(now),
            month: month_of(now),
            totals,
            ..Slot::default()
        };
        slots[i] = s;
        *self.live(part, &g) += 1;
        Ok(())
    }

    /// Applies a committed ledger row (at `ts`) and settles its reservation's hold. Never errors:
    /// it runs inside the commit callback. A missing entry needs nothing: it is rebuilt from the
    /// ledger, which already holds the row.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_commit(&self, key: &Key, db: u32, ts: i64, input: i64, output: i64, hold: Option<i64>, now: i64) {
        let _ = self.with_entry(key, db, now, |s| {
            let (d, m) = (day_of(ts), month_of(ts));
            roll_to(s, d, m);
            let t = &mut s.totals;
            if d == s.day {
                t.day_requests = t.day_requests.saturating_add(1);
                t.day_input = t.day_input.saturating_add(input);
                t.day_output = t.day_output.saturating_add(output);
            }
            if m == s.month {
                t.month_requests = t.month_requests.saturating_add(1);
                t.month_input = t.month_input.saturating_add(input);
                t.month_output = t.month_output.saturating_add(output);
            }
            if let Some(tokens) = hold {
                release_hold(t, tokens);
            }
        });
    }

    /// Gives back one request and `tokens` held by a reservation.
    fn give_back(&self, key: &Key, db: u32, tokens: i64, now: i64) {
        let _ = self.with_entry(key, db, now, |s| release_hold(&mut s.totals, tokens));
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

    // ---------------------------------------------------------------- reservations

    fn res(&self, i: usize) -> &Resv {
        unsafe { &*self.resv.add(i) }
    }

    #[allow(clippy::mut_from_ref)]
    fn res_mut(&self, i: usize) -> &mut Resv {
        unsafe { &mut *self.resv.add(i) }
    }

    /// Claims a free reservation slot, expiring stale ones met on the way. `None` when every
    /// slot holds an unexpired reservation.
    #[allow(clippy::collapsible_match)]
    pub fn claim_reservation(&self, now: i64) -> Option<usize> {
        let n = self.nres;
        let start = self.header().res_hint.fetch_add(1, Ordering::Relaxed) as usize % n;
        for k in 0..n {
            let i = (start + k) % n;
            let r = self.res(i);
            match r.state.load(Ordering::Acquire) {
                RES_FREE => {
                    if r.state
                        .compare_exchange(RES_FREE, RES_CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.header().res_hint.store(i as u32 + 1, Ordering::Relaxed);
                        return Some(i);
                    }
                }
                RES_ACTIVE if unsafe { ptr::read_volatile(&r.expires_at) } <= now => {
                    if self.expire_one(i, now)
                        && r.state
                            .compare_exchange(RES_FREE, RES_CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                    {
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// Gives a claimed slot back without using it.
    pub fn unclaim(&self, i: usize) {
        self.res(i).state.store(RES_FREE, Ordering::Release);
    }

    /// Fills a claimed slot and makes it visible.
    #[allow(clippy::too_many_arguments)]
    pub fn publish(&self, i: usize, id: [u8; 16], db: u32, key: Key, tenant_fp: u64, tokens: i64, expires_at: i64) {
        let r = self.res_mut(i);
        r.id = id;
        r.db = db;
        r.key = key;
        r.tenant_fp = tenant_fp;
        r.tokens = tokens;
        r.expires_at = expires_at;
        r.owner_pid = 0;
        r.state.store(RES_ACTIVE, Ordering::Release);
    }

    /// Expires reservation `i` if it is still active and past its time.
    fn expire_one(&self, i: usize, now: i64) -> bool {
        let r = self.res(i);
        if r.state
            .compare_exchange(RES_ACTIVE, RES_SETTLING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        if r.expires_at > now {
            r.state.store(RES_ACTIVE, Ordering::Release);
            return false;
        }
        self.give_back(&r.key, r.db, r.tokens, now);
        r.state.store(RES_FREE, Ordering::Release);
        self.bump(Stat::Expired);
        true
    }

    /// Expires every reservation past its time (all subjects when `only` is None). Returns how many
    /// it expired, and for `only`, the earliest expiry among that subject's remaining ones.
    pub fn expire_reservations(&self, now: i64, only: Option<(&Key, u32)>) -> (i64, i64) {
        let mut expired = 0;
        let mut next = i64::MAX;
        for i in 0..self.nres {
            let r = self.res(i);
            if r.state.load(Ordering::Acquire) != RES_ACTIVE {
                continue;
            }
            let (k, db, exp) = unsafe {
                (
                    ptr::read_volatile(&r.key),
                    ptr::read_volatile(&r.db),
                    ptr::read_volatile(&r.expires_at),
                )
            };
            if let Some((ok, odb)) = only {
                if k != *ok || db != odb {
                    continue;
                }
            }
            if exp <= now {
                if self.expire_one(i, now) {
                    expired += 1;
                }
            } else {
                next = next.min(exp);
            }
        }
        if let Some((k, db)) = only {
            let _ = self.with_entry(k, db, now, |s| s.next_expiry = if next == i64::MAX { 0 } else { next });
        }
        (expired, next)
    }

    /// Finds an active reservation by id and moves it to settling, owned by this backend.
    pub fn take_reservation(&self, id: &[u8; 16], db: u32) -> Taken {
        let i = u32::from_be_bytes([id[0], id[1], id[2], id[3]]) as usize;
        if i >= self.nres {
            return Taken::Unknown;
        }
        let r = self.res(i);
        let same = || unsafe { ptr::read_volatile(&r.id) == *id && ptr::read_volatile(&r.db) == db };
        match r.state.load(Ordering::Acquire) {
            RES_ACTIVE if same() => {}
            RES_SETTLING if same() => return Taken::Busy,
            _ => return Taken::Unknown,
        }
        if r.state
            .compare_exchange(RES_ACTIVE, RES_SETTLING, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return if same() { Taken::Busy } else { Taken::Unknown };
        }
        if !same() {
            r.state.store(RES_ACTIVE, Ordering::Release);
            return Taken::Unknown;
        }
        self.res_mut(i).owner_pid = unsafe { pg_sys::MyProcPid };
        Taken::Held(Held {
            index: i,
            key: r.key,
            tenant_fp: r.tenant_fp,
            tokens: r.tokens,
        })
    }

    /// Puts a reservation taken with `take_reservation` back (its settling transaction aborted).
    pub fn untake(&self, i: usize) {
        let r = self.res_mut(i);
        r.owner_pid = 0;
        r.state.store(RES_ACTIVE, Ordering::Release);
    }

    /// Frees a taken reservation after its hold was settled.
    pub fn free_taken(&self, i: usize) {
        self.res(i).state.store(RES_FREE, Ordering::Release);
    }

    /// Releases a taken reservation's hold and frees it (cp_release).
    pub fn release_taken(&self, h: &Held, db: u32, now: i64) {
        self.give_back(&h.key, db, h.tokens, now);
        self.free_taken(h.index);
        self.bump(Stat::Released);
    }

    pub fn reservations_in_use(&self) -> i64 {
        (0..self.nres)
            .filter(|&i| self.res(i).state.load(Ordering::Relaxed) != RES_FREE)
            .count() as i64
    }
}

/// A reservation moved to settling by this backend.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub index: usize,
    pub key: Key,
    pub tenant_fp: u64,
    pub tokens: i64,
}

pub enum Taken {
    Held(Held),
    Busy,
    Unknown,
}

fn release_hold(t: &mut Totals, tokens: i64) {
    t.held_requests = (t.held_requests - 1).max(0);
    t.held_tokens = (t.held_tokens.saturating_sub(tokens)).max(0);
}

/// Moves an entry's windows forward to `now` (a new day or month starts at zero).
fn roll(s: &mut Slot, now: i64) {
    roll_to(s, day_of(now), month_of(now));
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
