//! The oldest ledger row each backend's open transaction inserted on the fast path of sealing
//! (`crate::sealing`): a sealing of its database never goes past it, so it never passes a row
//! that is not committed yet. Two values per backend (the row's time, its database), written by
//! that backend only, read by `cp_cleanup`.

use super::Shared;
use std::sync::atomic::{AtomicI64, Ordering};

/// A backend with no row published (a row at exactly this instant is published 1 µs earlier).
const NONE: i64 = 0;

/// This backend's number among the `MaxBackends` regular backends and background workers.
fn backend_index() -> Option<usize> {
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    let i = unsafe { pgrx::pg_sys::MyBackendId } as i64 - 1;
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    let i = unsafe { pgrx::pg_sys::MyProcNumber } as i64;
    usize::try_from(i).ok()
}

/// Bytes of the region: two values per backend.
pub fn region_bytes(backends: usize) -> usize {
    backends * 2 * std::mem::size_of::<AtomicI64>()
}

impl Shared {
    /// Backend `i`'s (time, database).
    fn open_row(&self, i: usize) -> (&AtomicI64, &AtomicI64) {
        unsafe { (&*self.open_rows.add(2 * i), &*self.open_rows.add(2 * i + 1)) }
    }

    fn open_row_slot(&self) -> Option<&AtomicI64> {
        let i = backend_index().filter(|i| *i < self.nopen)?;
        Some(self.open_row(i).0)
    }

    /// Publishes that this backend's transaction inserted a row dated `t` (µs since the epoch)
    /// in database `db`, before the row can be committed. False when this backend has no slot
    /// (the caller then takes the slow path).
    pub fn publish_open_row(&self, t: i64, db: u32) -> bool {
        let Some(i) = backend_index().filter(|i| *i < self.nopen) else {
            return false;
        };
        let (slot, database) = self.open_row(i);
        // The database first: a reader that sees the time sees its database.
        database.store(i64::from(db), Ordering::SeqCst);
        let t = if t == NONE { NONE - 1 } else { t };
        let cur = slot.load(Ordering::Relaxed);
        if cur == NONE || t < cur {
            slot.store(t, Ordering::SeqCst);
        }
        // Published before the caller reads the clock.
        std::sync::atomic::fence(Ordering::SeqCst);
        true
    }

    /// This backend's transaction ended (its rows are committed and visible, or gone).
    pub fn clear_open_rows(&self) {
        if let Some(slot) = self.open_row_slot() {
            slot.store(NONE, Ordering::Release);
        }
    }

    /// The oldest row published by any backend in database `db`, if any.
    pub fn oldest_open_row(&self, db: u32) -> Option<i64> {
        std::sync::atomic::fence(Ordering::SeqCst);
        (0..self.nopen)
            .filter_map(|i| {
                let (slot, database) = self.open_row(i);
                let t = slot.load(Ordering::SeqCst);
                (t != NONE && database.load(Ordering::SeqCst) == i64::from(db)).then_some(t)
            })
            .min()
    }
}
