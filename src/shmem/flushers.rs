//! The registry of flushers: one background worker per database that writes expired
//! reservations' charges to the ledger (see `crate::flusher`, which starts them). Backends that
//! expire reservations wake them.
//!
//! A slot is a database's while its flusher starts or runs, and free again when the flusher
//! exits (at its idle exit, on an error, when its database is dropped): a slot's database and
//! state change together, in one compare-and-swap. A start that never ran (no process came up)
//! is given up after `START_TIMEOUT_US`. When no flusher can run for a database (every slot
//! taken, or no free `max_worker_processes` slot), `cp_cleanup` writes its charges.

use super::Shared;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Databases that can have a flusher at once.
pub const MAX_FLUSHERS: usize = 64;

const IDLE: u64 = 0;
const STARTING: u64 = 1;
const RUNNING: u64 = 2;

/// A start asked for this long ago that has not run is given up (µs).
const START_TIMEOUT_US: i64 = 10_000_000;

/// One database's flusher.
#[repr(C)]
#[derive(Default)]
pub struct FlusherSlot {
    /// The database (high 32 bits) and the state (low 32 bits); 0 is a free slot.
    word: AtomicU64,
    /// The worker's latch (a pointer into shared memory), 0 until it runs.
    latch: AtomicU64,
    /// When a start was last asked for (µs since the epoch): at most one a second.
    started_at: AtomicI64,
    _pad: u64,
}

fn word(db: u32, state: u64) -> u64 {
    (db as u64) << 32 | state
}

impl FlusherSlot {
    fn db(&self) -> u32 {
        (self.word.load(Ordering::Acquire) >> 32) as u32
    }

    /// Moves the slot of `db` from `from` to `to` (0: free); false when it was not in `from`.
    fn swap(&self, db: u32, from: u64, to: u64) -> bool {
        self.word
            .compare_exchange(word(db, from), to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl Shared {
    fn flusher_slots(&self) -> &[FlusherSlot; MAX_FLUSHERS] {
        &self.header().flushers
    }

    /// The slot of `db`, claiming one (idle) when `claim` is set: a free one, else one where no
    /// flusher runs or starts (another database's idle slot, or a start given up).
    fn flusher_slot(&self, db: u32, claim: bool) -> Option<&FlusherSlot> {
        let slots = self.flusher_slots();
        if let Some(s) = slots.iter().find(|s| s.db() == db) {
            return Some(s);
        }
        if !claim {
            return None;
        }
        // A slot taken over starts afresh: its last start was another database's.
        let take = |s: &FlusherSlot, w: u64| {
            let taken = s
                .word
                .compare_exchange(w, word(db, IDLE), Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if taken {
                s.started_at.store(0, Ordering::Release);
            }
            taken
        };
        if let Some(s) = slots.iter().find(|s| take(s, 0)) {
            return Some(s);
        }
        let now = crate::catalog::now_unix_us();
        slots.iter().find(|s| {
            let w = s.word.load(Ordering::Acquire);
            let state = w & 0xffff_ffff;
            let unused =
                state == IDLE || (state == STARTING && now - s.started_at.load(Ordering::Acquire) >= START_TIMEOUT_US);
            unused && take(s, w)
        })
    }

    /// Whether a flusher for `db` should be started now: none runs or starts (or its start has
    /// not run for `START_TIMEOUT_US`), and none was asked for in the last second. When true,
    /// the slot is marked starting: the caller starts the worker, or calls `flusher_not_started`
    /// when it cannot.
    pub fn flusher_start_due(&self, db: u32, now: i64) -> bool {
        let Some(s) = self.flusher_slot(db, true) else {
            return false;
        };
        let last = s.started_at.load(Ordering::Acquire);
        if now - last < 1_000_000 {
            return false;
        }
        let from = match s.word.load(Ordering::Acquire) {
            w if w == word(db, IDLE) => IDLE,
            w if w == word(db, STARTING) && now - last >= START_TIMEOUT_US => STARTING,
            _ => return false,
        };
        s.started_at
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && s.swap(db, from, word(db, STARTING))
    }

    /// A start that `flusher_start_due` allowed could not be made: the slot is free again.
    pub fn flusher_not_started(&self, db: u32) {
        if let Some(s) = self.flusher_slot(db, false) {
            s.swap(db, STARTING, 0);
        }
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
            if s.word.load(Ordering::Acquire) & 0xffff_ffff == RUNNING && latch != 0 {
                unsafe { pgrx::pg_sys::SetLatch(latch as *mut pgrx::pg_sys::Latch) };
            }
        }
    }

    /// Called by the flusher of `db` when it runs, with its latch. False when every slot is
    /// another database's: it exits, and `cp_cleanup` writes that database's charges.
    pub fn flusher_running(&self, db: u32, latch: *mut pgrx::pg_sys::Latch) -> bool {
        let Some(s) = self.flusher_slot(db, true) else {
            return false;
        };
        s.latch.store(latch as u64, Ordering::Release);
        s.word.store(word(db, RUNNING), Ordering::Release);
        true
    }

    /// True when a flusher runs (or is starting) for `db`.
    pub fn flusher_alive(&self, db: u32) -> bool {
        self.flusher_slot(db, false).is_some_and(|s| {
            let w = s.word.load(Ordering::Acquire);
            w == word(db, RUNNING)
                || (w == word(db, STARTING)
                    && crate::catalog::now_unix_us() - s.started_at.load(Ordering::Acquire) < START_TIMEOUT_US)
        })
    }

    /// Called by the flusher of `db` when it stops (idle, or exiting, `latch` its own): its slot
    /// is free again, unless another flusher runs there now. A worker that exits before it ran
    /// (its database was dropped, say) frees the start it was.
    pub fn flusher_stopped(&self, db: u32, latch: *mut pgrx::pg_sys::Latch) {
        if let Some(s) = self.flusher_slot(db, false) {
            // The latch first: a flusher that runs there after this one sets its own, and is
            // never left behind a free slot's stale one (or a running slot without a process).
            let mine = s
                .latch
                .compare_exchange(latch as u64, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if mine {
                s.swap(db, RUNNING, 0);
            } else {
                s.swap(db, STARTING, 0);
            }
        }
    }
}
