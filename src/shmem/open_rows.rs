//! The oldest ledger row each backend's open transaction inserted on the fast path of sealing
//! (`crate::sealing`): a sealing never goes past it, so it never passes a row that is not
//! committed yet. One value per backend, written by that backend only, read by `cp_cleanup`.

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

/// Bytes of the region: one value per backend.
pub fn region_bytes(backends: usize) -> usize {
    backends * std::mem::size_of::<AtomicI64>()
}

impl Shared {
    fn open_row_slot(&self) -> Option<&AtomicI64> {
        let i = backend_index().filter(|i| *i < self.nopen)?;
        Some(unsafe { &*self.open_rows.add(i) })
    }

    /// Publishes that this backend's transaction inserted a row dated `t` (µs since the epoch),
    /// before the row can be committed. False when this backend has no slot (the caller then
    /// takes the slow path).
    pub fn publish_open_row(&self, t: i64) -> bool {
        let Some(slot) = self.open_row_slot() else {
            return false;
        };
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

    /// The oldest row published by any backend (of any database), if any.
    pub fn oldest_open_row(&self) -> Option<i64> {
        std::sync::atomic::fence(Ordering::SeqCst);
        (0..self.nopen)
            .map(|i| unsafe { &*self.open_rows.add(i) }.load(Ordering::SeqCst))
            .filter(|t| *t != NONE)
            .min()
    }
}
