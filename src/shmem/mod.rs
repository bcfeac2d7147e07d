//! Shared memory: one region, sized at server start by `control_plane.max_subjects` and
//! `control_plane.max_reservations`, zeroed in place (never built on the stack):
//!
//! ```text
//! Header | versions | Slot x (NPARTS * slots_per_part) | Resv x max_reservations | free list
//!        | TenantSlot x (MAX_TENANTS + 1) | ZoneNames | open row x MaxBackends
//! ```
//!
//! - `index`: running totals, rate states and policy stamps per (database, tenant, subject);
//! - `reservations`: what admitted requests hold until they are settled, released or expire;
//! - `tenants`: per-tenant counters for monitoring;
//! - `zones`: the tenants' time zones by number, and each process's clocks for them;
//! - `open_rows`: per backend, the oldest ledger row its open transaction inserted (sealing);
//! - here: the region, its hooks, the decision counters and the version counters that tell
//!   backends which cached policies are stale.
//!
//! Everything here is an index of the ledger: a backend crash zeroes the region and the totals are
//! rebuilt from `control_plane.usage_events` on first sight.

mod flushers;
mod index;
mod open_rows;
mod reservations;
mod tenants;
mod zones;

pub use index::{Effect, Grant, Hold, PolicyStamp, Seen, POLICY_ACTIVE, POLICY_HAS_ORG, POLICY_HAS_OVERRIDES};
pub use reservations::{random_id, Charge, Owner, Taken};
pub use tenants::{Usage, OVERFLOW as TENANT_OVERFLOW};
pub use zones::UTC;

use crate::error::{CpError, CpResult};
use crate::key::Key;
use index::Slot;
use pgrx::pg_sys;
use pgrx::prelude::*;
use reservations::Resv;
use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

pub const NPARTS: usize = 64;
/// Version counters of subject rows and of profile rows, hashed (powers of two).
const SUBJECT_VERSIONS: usize = 1 << 16;
const PROFILE_VERSIONS: usize = 1 << 12;
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
    /// Refused by a money budget, or because a budget applies and the model has no price.
    DeniedBudget,
    Rebuilds,
    Evictions,
    Settled,
    Released,
    Expired,
    SubjectReads,
    ProfileReads,
    ExpiredEarly,
    ChargesWritten,
}
pub const STAT_NAMES: [&str; 17] = [
    "admits_allowed",
    "denied_quota",
    "denied_rate",
    "denied_concurrency",
    "denied_model_or_feature",
    "denied_inactive",
    "denied_capacity",
    "denied_budget",
    "ledger_rebuilds",
    "evictions",
    "reservations_settled",
    "reservations_released",
    "reservations_expired",
    "subject_reads",
    "profile_reads",
    "reservations_expired_early",
    "expired_charges_written",
];

/// Counters bumped on every call live in stripes of their own cache lines, one stripe per group of
/// backends: a single line bumped by every backend would move between cores on every call.
const STAT_STRIPES: usize = 32;

#[repr(C, align(64))]
struct StatStripe([AtomicU64; STAT_NAMES.len()]);

#[repr(C)]
pub struct Header {
    // Read on every call, written at start-up or on admin changes only.
    magic: u64,
    slots_per_part: u32,
    part_cap: u32,
    nres: u32,
    _pad: u32,
    /// Seed of the subject fingerprints (`key::set_seed`), random per server start.
    key_seed: u64,
    /// Bumped after a committed change that may touch any subject's policy (profiles added,
    /// removed or renamed; a table truncated).
    pub policy_gen: AtomicU64,
    stats: [StatStripe; STAT_STRIPES],
    /// Live entries per partition, guarded by the partition's lock.
    part_live: [u32; NPARTS],
    flushers: [flushers::FlusherSlot; flushers::MAX_FLUSHERS],
    /// Bumped by an admission that waits for a free reservation slot: flushers then write at once.
    slots_wanted: AtomicU64,
}

struct Layout {
    slots_per_part: usize,
    part_cap: usize,
    nres: usize,
    versions_off: usize,
    slots_off: usize,
    res_off: usize,
    tags_off: usize,
    tenants_off: usize,
    zones_off: usize,
    open_off: usize,
    nopen: usize,
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
        let versions_off = align64(std::mem::size_of::<Header>());
        let slots_off = align64(versions_off + (SUBJECT_VERSIONS + PROFILE_VERSIONS) * 8);
        let res_off = align64(slots_off + NPARTS * slots_per_part * std::mem::size_of::<Slot>());
        let tags_off = align64(res_off + nres * std::mem::size_of::<Resv>());
        let tenants_off = align64(tags_off + nres * std::mem::size_of::<AtomicU32>());
        let zones_off = align64(tenants_off + tenants::region_bytes());
        let open_off = align64(zones_off + zones::region_bytes());
        // (Known when shared memory is requested, from PostgreSQL 15 on.)
        let nopen = unsafe { pg_sys::MaxBackends }.max(1) as usize;
        let total = open_off + open_rows::region_bytes(nopen);
        Layout {
            slots_per_part,
            part_cap,
            nres,
            versions_off,
            slots_off,
            res_off,
            tags_off,
            tenants_off,
            zones_off,
            open_off,
            nopen,
            total,
        }
    }
}

pub struct Shared {
    header: *mut Header,
    versions: *const AtomicU64,
    slots: *mut Slot,
    resv: *mut Resv,
    /// A tag of each reservation slot's id (`reservations::tag`), probed before the id.
    tags: *const AtomicU32,
    tenants: *mut tenants::TenantSlot,
    zones: *mut zones::ZoneNames,
    open_rows: *const AtomicI64,
    nopen: usize,
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
        let shared = Shared {
            header: base as *mut Header,
            versions: base.add(l.versions_off) as *const AtomicU64,
            slots: base.add(l.slots_off) as *mut Slot,
            resv: base.add(l.res_off) as *mut Resv,
            tags: base.add(l.tags_off) as *const AtomicU32,
            tenants: base.add(l.tenants_off) as *mut tenants::TenantSlot,
            zones: base.add(l.zones_off) as *mut zones::ZoneNames,
            open_rows: base.add(l.open_off) as *const AtomicI64,
            nopen: l.nopen,
            locks: pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr()),
            slots_per_part: l.slots_per_part,
            part_cap: l.part_cap,
            nres: l.nres,
        };
        if !found {
            ptr::write_bytes(base, 0, l.total);
            let h = base as *mut Header;
            (*h).slots_per_part = l.slots_per_part as u32;
            (*h).part_cap = l.part_cap as u32;
            (*h).nres = l.nres as u32;
            (*h).policy_gen.store(1, Ordering::Relaxed);
            let mut seed = [0u8; 8];
            if !pg_sys::pg_strong_random(seed.as_mut_ptr().cast(), 8) {
                seed = (pg_sys::MyStartTime as u64 ^ pg_sys::MyProcPid as u64).to_le_bytes();
            }
            (*h).key_seed = u64::from_le_bytes(seed);
            (*h).magic = MAGIC;
        }
        crate::key::set_seed((*(base as *mut Header)).key_seed);
        pg_sys::LWLockRelease(init_lock);
        SHARED = Some(shared);
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

impl Shared {
    fn header(&self) -> &Header {
        unsafe { &*self.header }
    }

    pub fn bump(&self, s: Stat) {
        self.bump_by(s, 1);
    }

    pub fn bump_by(&self, s: Stat, n: u64) {
        let stripe = unsafe { pg_sys::MyProcPid } as usize % STAT_STRIPES;
        self.header().stats[stripe].0[s as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn stat_values(&self) -> Vec<(&'static str, i64)> {
        let h = self.header();
        STAT_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let sum = h
                    .stats
                    .iter()
                    .map(|st| st.0[i].load(Ordering::Relaxed))
                    .fold(0u64, u64::wrapping_add);
                (*n, sum as i64)
            })
            .collect()
    }

    pub fn policy_generation(&self) -> u64 {
        self.header().policy_gen.load(Ordering::Acquire)
    }

    pub fn bump_policy_generation(&self) {
        self.header().policy_gen.fetch_add(1, Ordering::AcqRel);
    }

    fn subject_version(&self, key: &Key) -> &AtomicU64 {
        let i = (key.hi ^ key.lo.rotate_left(32)) as usize & (SUBJECT_VERSIONS - 1);
        unsafe { &*self.versions.add(i) }
    }

    fn profile_version(&self, profile_id: i32) -> &AtomicU64 {
        let i = (profile_id as u32 as usize).wrapping_mul(0x9e37_79b1) >> 7 & (PROFILE_VERSIONS - 1);
        unsafe { &*self.versions.add(SUBJECT_VERSIONS + i) }
    }

    /// A number that grows whenever a committed change may alter what the subject's row says
    /// (its own row, or anything global). Read it before reading the row: a cache tagged with it
    /// is valid while it is unchanged.
    pub fn subject_stamp(&self, key: &Key) -> u64 {
        self.policy_generation() + self.subject_version(key).load(Ordering::Acquire)
    }

    /// The same for a profile row, by `profiles.id`.
    pub fn profile_stamp(&self, profile_id: i32) -> u64 {
        self.policy_generation() + self.profile_version(profile_id).load(Ordering::Acquire)
    }

    /// After a committed change to one subject's row (hashed: a collision only costs a re-read).
    pub fn bump_subject(&self, key: &Key) {
        self.subject_version(key).fetch_add(1, Ordering::AcqRel);
    }

    /// After a committed change to one profile's row.
    pub fn bump_profile(&self, profile_id: i32) {
        self.profile_version(profile_id).fetch_add(1, Ordering::AcqRel);
    }

    pub fn capacity(&self) -> (i64, i64, i64) {
        ((NPARTS * self.part_cap) as i64, self.nres as i64, NPARTS as i64)
    }

    fn lock(&self, part: usize, mode: pg_sys::LWLockMode::Type) -> PartGuard {
        let lock = unsafe { ptr::addr_of_mut!((*self.locks.add(part)).lock) };
        unsafe { pg_sys::LWLockAcquire(lock, mode) };
        PartGuard { lock }
    }
}
