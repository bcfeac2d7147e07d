//! Reservations: what an admitted request holds (one request and its token estimate) until it
//! is settled by `cp_record_usage`, released by `cp_release`, or expires. Slots are claimed and
//! settled with compare-and-swap on their state word, so a reservation is settled exactly once.

use super::{Shared, Stat};
use crate::key::Key;
use pgrx::pg_sys;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

const RES_FREE: u32 = 0;
const RES_CLAIMED: u32 = 1;
const RES_ACTIVE: u32 = 2;
const RES_SETTLING: u32 = 3;

/// Slots of the ring that a claim looks at for expired reservations when the free list is empty.
const SWEEP: usize = 64;

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

const _: () = assert!(std::mem::size_of::<Resv>() == 96);

impl Shared {
    fn res(&self, i: usize) -> &Resv {
        unsafe { &*self.resv.add(i) }
    }

    #[allow(clippy::mut_from_ref)]
    fn res_mut(&self, i: usize) -> &mut Resv {
        unsafe { &mut *self.resv.add(i) }
    }

    /// Claims a free reservation slot in O(1): the top of the free list, or else one of the next
    /// `SWEEP` slots of the ring cursor that has expired. `None` when neither has one. The slot
    /// is given back when the claim is dropped without being published.
    pub fn claim_reservation(&self, now: i64) -> Option<Claim<'_>> {
        let index = match self.pop_free() {
            Some(i) => i,
            None => {
                self.sweep_expired(now, SWEEP);
                self.pop_free()?
            }
        };
        Some(Claim {
            sh: self,
            index,
            published: false,
        })
    }

    fn free_next(&self, i: usize) -> &AtomicU32 {
        unsafe { &*self.free_next.add(i) }
    }

    /// Pops the free list (a Treiber stack whose head carries a tag against ABA).
    fn pop_free(&self) -> Option<usize> {
        let head = &self.header().free_head;
        let mut h = head.load(Ordering::Acquire);
        loop {
            let top = (h & 0xffff_ffff) as usize;
            if top == 0 {
                return None;
            }
            let next = self.free_next(top - 1).load(Ordering::Acquire) as u64;
            let tagged = ((h >> 32).wrapping_add(1) << 32) | next;
            match head.compare_exchange_weak(h, tagged, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let r = self.res(top - 1);
                    if r.state
                        .compare_exchange(RES_FREE, RES_CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        return Some(top - 1);
                    }
                    h = head.load(Ordering::Acquire); // never expected: a listed slot in use
                }
                Err(now) => h = now,
            }
        }
    }

    /// Marks slot `i` free and pushes it on the free list.
    fn free_slot(&self, i: usize) {
        self.res(i).state.store(RES_FREE, Ordering::Release);
        let head = &self.header().free_head;
        let mut h = head.load(Ordering::Acquire);
        loop {
            self.free_next(i).store((h & 0xffff_ffff) as u32, Ordering::Release);
            let tagged = ((h >> 32).wrapping_add(1) << 32) | (i as u64 + 1);
            match head.compare_exchange_weak(h, tagged, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }

    /// Expires what has expired among the next `n` slots of the ring cursor.
    fn sweep_expired(&self, now: i64, n: usize) {
        let total = self.nres;
        let start = self.header().res_hint.fetch_add(n as u32, Ordering::Relaxed) as usize;
        for k in 0..n.min(total) {
            let i = (start + k) % total;
            let r = self.res(i);
            if r.state.load(Ordering::Acquire) == RES_ACTIVE && unsafe { ptr::read_volatile(&r.expires_at) } <= now {
                self.expire_one(i, now);
            }
        }
    }

    /// Fills a claimed slot and makes it visible.
    #[allow(clippy::too_many_arguments)]
    fn publish(&self, i: usize, id: [u8; 16], db: u32, key: Key, tenant_fp: u64, tokens: i64, expires_at: i64) {
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
        self.free_slot(i);
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
        self.free_slot(i);
    }

    /// Releases a taken reservation's hold and frees it (cp_release).
    pub fn release_taken(&self, h: &Held, db: u32, now: i64) {
        self.give_back(&h.key, db, h.tokens, now);
        self.free_taken(h.index);
        self.bump(Stat::Released);
    }

    /// Links every slot into the free list (at start-up, on a zeroed region).
    pub(super) fn init_free_list(&self) {
        for i in 0..self.nres {
            let next = if i + 1 < self.nres { i as u32 + 2 } else { 0 };
            self.free_next(i).store(next, Ordering::Relaxed);
        }
        self.header().free_head.store(1, Ordering::Release);
    }

    pub fn reservations_in_use(&self) -> i64 {
        (0..self.nres)
            .filter(|&i| self.res(i).state.load(Ordering::Relaxed) != RES_FREE)
            .count() as i64
    }
}

/// A claimed reservation slot, not yet visible to anyone. Dropping it gives the slot back.
pub struct Claim<'a> {
    sh: &'a Shared,
    index: usize,
    published: bool,
}

impl Claim<'_> {
    pub fn index(&self) -> usize {
        self.index
    }

    /// Fills the slot and makes the reservation visible.
    pub fn publish(mut self, id: [u8; 16], db: u32, key: Key, tenant_fp: u64, tokens: i64, expires_at: i64) {
        self.sh.publish(self.index, id, db, key, tenant_fp, tokens, expires_at);
        self.published = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.published {
            self.sh.free_slot(self.index);
        }
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
