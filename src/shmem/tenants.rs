//! Per-tenant counters for monitoring (`control_plane.tenant_stats`): what each tenant's
//! admissions decided, and the usage that reached its totals (recorded at commit, charged at
//! expiry). Counters since server start, like `control_plane.stats`.
//!
//! One slot per (database, tenant) with a row in `control_plane.tenants` (or the default tenant),
//! claimed on first use with a compare-and-swap on its fingerprint (open addressing). Tenants
//! without a row (any name a session sets) count together in one overflow slot, reported with a
//! NULL tenant, and so do the tenants beyond `MAX_TENANTS`: slots are never freed, so made-up
//! names must not take them. Each slot's counters are striped over cache
//! lines by backend, like the global ones.

use super::{Shared, Stat};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Tenants (over all databases) with counters of their own.
pub const MAX_TENANTS: usize = 1024;
/// The slot where tenants beyond `MAX_TENANTS` count.
pub const OVERFLOW: usize = MAX_TENANTS;
const NAME: usize = crate::args::MAX_NAME_BYTES;
/// Admission outcomes first (`Stat::Allowed` .. `Stat::DeniedBudget` index them), then `Usage`;
/// `cp_tenant_stats` returns them in this order.
const OUTCOMES: usize = Stat::DeniedBudget as usize + 1;
const COUNTERS: usize = OUTCOMES + 5;
const STRIPES: usize = 8;

/// What a tenant's usage counters count (after the admission outcomes).
#[derive(Clone, Copy)]
pub enum Usage {
    /// Usage rows committed by `cp_record_usage`.
    Recorded = OUTCOMES as isize,
    InputTokens,
    OutputTokens,
    /// Reservations that expired unsettled (a late record may still replace their charge).
    Expired,
    /// Tokens those expiries charged (their estimates; 0 under `on_expiry = 'release_estimate'`).
    ExpiredTokens,
}

#[repr(C, align(64))]
struct Stripe([AtomicU64; COUNTERS]);

#[repr(C, align(64))]
pub struct TenantSlot {
    /// Fingerprint of (database, tenant); 0 while free.
    fp: AtomicU64,
    /// Set once `db` and the name are written.
    ready: AtomicU32,
    db: u32,
    name_len: u32,
    name: [u8; NAME],
    stripes: [Stripe; STRIPES],
}

/// One tenant's counters, read by `cp_tenant_stats`.
pub struct TenantCounts {
    pub db: u32,
    /// None for the overflow slot.
    pub tenant: Option<String>,
    pub counts: [i64; COUNTERS],
}

impl Shared {
    fn tenant_slots(&self) -> &[TenantSlot] {
        unsafe { std::slice::from_raw_parts(self.tenants, MAX_TENANTS + 1) }
    }

    /// The slot of tenant `tenant` of database `db` (fingerprint `fp`), claimed if new; the
    /// overflow slot when every slot is taken.
    pub fn tenant_slot(&self, db: u32, fp: u64, tenant: &str) -> usize {
        let fp = fp.max(1);
        let slots = self.tenant_slots();
        let start = (fp % MAX_TENANTS as u64) as usize;
        for k in 0..MAX_TENANTS {
            let i = (start + k) % MAX_TENANTS;
            let s = &slots[i];
            match s.fp.load(Ordering::Acquire) {
                f if f == fp => return i,
                0 => match s.fp.compare_exchange(0, fp, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        let n = tenant.len().min(NAME);
                        // SAFETY: only the claimer writes these, once, before `ready`; readers
                        // wait for `ready`.
                        unsafe {
                            let w = self.tenants.add(i);
                            (*w).db = db;
                            std::ptr::copy_nonoverlapping(
                                tenant.as_ptr(),
                                std::ptr::addr_of_mut!((*w).name).cast::<u8>(),
                                n,
                            );
                            (*w).name_len = n as u32;
                        }
                        s.ready.store(1, Ordering::Release);
                        return i;
                    }
                    Err(f) if f == fp => return i,
                    Err(_) => {}
                },
                _ => {}
            }
        }
        OVERFLOW
    }

    fn tenant_bump(&self, slot: usize, counter: usize, n: u64) {
        let stripe = unsafe { pgrx::pg_sys::MyProcPid } as usize % STRIPES;
        self.tenant_slots()[slot.min(OVERFLOW)].stripes[stripe].0[counter].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts an admission outcome, globally and for the tenant in `slot`.
    pub fn bump_outcome(&self, slot: usize, s: Stat) {
        self.bump(s);
        if (s as usize) < OUTCOMES {
            self.tenant_bump(slot, s as usize, 1);
        }
    }

    /// Adds `n` to a usage counter of the tenant in `slot`.
    pub fn bump_usage(&self, slot: usize, u: Usage, n: i64) {
        if n > 0 {
            self.tenant_bump(slot, u as usize, n as u64);
        }
    }

    /// Every tenant with counters, the overflow slot last (when it counted anything).
    pub fn tenant_counts(&self) -> Vec<TenantCounts> {
        let mut out = Vec::new();
        for (i, s) in self.tenant_slots().iter().enumerate() {
            let overflow = i == OVERFLOW;
            if !overflow && s.ready.load(Ordering::Acquire) == 0 {
                continue;
            }
            let mut counts = [0i64; COUNTERS];
            for st in &s.stripes {
                for (c, v) in counts.iter_mut().zip(&st.0) {
                    *c = c.wrapping_add(v.load(Ordering::Relaxed) as i64);
                }
            }
            if overflow && counts.iter().all(|&c| c == 0) {
                continue;
            }
            out.push(TenantCounts {
                db: if overflow { 0 } else { s.db },
                tenant: (!overflow).then(|| String::from_utf8_lossy(&s.name[..s.name_len as usize]).into_owned()),
                counts,
            });
        }
        out
    }
}

/// Bytes of the tenant slots in the region.
pub const fn region_bytes() -> usize {
    (MAX_TENANTS + 1) * std::mem::size_of::<TenantSlot>()
}
