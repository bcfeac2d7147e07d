//! The registry of flushers: one background worker per database that writes expired
//! reservations' charges to the ledger (see `crate::flusher`, which starts them). Backends that
//! expire reservations wake them.

use super::Shared;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

/// Databases that can have a flusher at once.
pub const MAX_FLUSHERS: usize = 64;

const IDLE: u32 = 0;
const STARTING: u32 = 1;
const RUNNING: u32 = 2;

/// One database's flusher.
#[repr(C)]
#[derive(Default)]
pub struct FlusherSlot {
    db: AtomicU32,
    state: AtomicU32,
    /// The worker's latch (a pointer into shared memory), 0 until it runs.
    latch: AtomicU64,
    /// When a start was last asked for (µs since the epoch): at most one a second.
    started_at: AtomicI64,
}

impl Shared {
    fn flusher_slots(&self) -> &[FlusherSlot; MAX_FLUSHERS] {
        &self.header().flushers
    }

    /// The slot of `db`, claiming a free one when `claim` is set.
    fn flusher_slot(&self, db: u32, claim: bool) -> Option<&FlusherSlot> {
        let slots = self.flusher_slots();
        if let Some(s) = slots.iter().find(|s| s.db.load(Ordering::Acquire) == db) {
            return Some(s);
        }
        if !claim {
            return None;
        }
        for s in slots {
            match s.db.compare_exchange(0, db, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(s),
                Err(d) if d == db => return Some(s),
                Err(_) => {}
            }
        }
        None
    }

    /// Whether a flusher for `db` should be started now: none runs or starts, and none was asked
    /// for in the last second. When true, the slot is marked starting: the caller starts the
    /// worker, or calls `flusher_stopped` when it cannot.
    pub fn flusher_start_due(&self, db: u32, now: i64) -> bool {
        let Some(s) = self.flusher_slot(db, true) else {
            return false;
        };
        if s.state.load(Ordering::Acquire) != IDLE {
            return false;
        }
        let last = s.started_at.load(Ordering::Acquire);
        now - last >= 1_000_000
            && s.started_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            && s.state
                .compare_exchange(IDLE, STARTING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Asks the flushers to write what expired now (an admission waits for a free slot).
    pub fn want_slots(&self) {
        self.header().slots_wanted.fetch_add(1, Ordering::AcqRel);
        self.wake_flushers();
    }

    /// How often slots were wanted (a flusher writes at once when this moved).
    pub fn slots_wanted(&self) -> u64 {
        self.header().slots_wanted.load(Ordering::Acquire)
    }

    /// Wakes every running flusher (reservations were expired and wait to be written).
    fn wake_flushers(&self) {
        for s in self.flusher_slots() {
            let latch = s.latch.load(Ordering::Acquire);
            if s.state.load(Ordering::Acquire) == RUNNING && latch != 0 {
                unsafe { pgrx::pg_sys::SetLatch(latch as *mut pgrx::pg_sys::Latch) };
            }
        }
    }

    /// Called by the flusher of `db` when it runs, with its latch.
    pub fn flusher_running(&self, db: u32, latch: *mut pgrx::pg_sys::Latch) -> bool {
        let Some(s) = self.flusher_slot(db, true) else {
            return false;
        };
        s.latch.store(latch as u64, Ordering::Release);
        s.state.store(RUNNING, Ordering::Release);
        true
    }

    /// Called by the flusher of `db` when it exits.
    pub fn flusher_stopped(&self, db: u32) {
        if let Some(s) = self.flusher_slot(db, false) {
            s.latch.store(0, Ordering::Release);
            s.state.store(IDLE, Ordering::Release);
        }
    }
}
