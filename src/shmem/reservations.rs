//! Reservations: what an admitted request holds (one request, its token estimate, a place among
//! `max_concurrent`) until it is settled by `cp_record_usage`, released by `cp_release`, or
//! expires. Every move is a compare-and-swap on the slot's state word, so each reservation ends
//! exactly once:
//!
//! ```text
//! FREE -> CLAIMED -> ACTIVE -> SETTLING -> FREE              (recorded or released)
//!                      |           `-----> ACTIVE            (the recording transaction aborted)
//!                      `-> EXPIRING -> EXPIRED -> FLUSHING -> FREE     (charge written)
//!                                         |            `-----> EXPIRED (flush failed)
//!                                         `-> SETTLING -> FREE         (late record replaces it)
//! ```
//!
//! A reservation's id is 122 random bits (a version-4 UUID from `pg_strong_random`), and the
//! capability that `cp_record_usage` and `cp_release` need: it says nothing of its slot or its
//! time. Its slot is one of the `WINDOW` slots that follow a position derived from the id by a
//! hash seeded per server start; a claim takes a free one there, a lookup compares the
//! slots' tags (32 bits of the id) there, then the whole id.
//!
//! An expired reservation is charged at once in the subject's totals (its request, and its token
//! and cost estimates unless `control_plane.on_expiry = 'release_estimate'`), and stays in its slot until
//! the flusher of its database has written the charge to the ledger. The slot keeps the tenant,
//! subject and organisation names for that. A reservation of a subject of an organisation is held,
//! charged and released on the organisation's entry too.

use super::index::{Effect, Hold};
use super::{Shared, Stat, Usage};
use crate::key::Key;
use pgrx::pg_sys;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

const RES_FREE: u32 = 0;
const RES_CLAIMED: u32 = 1;
const RES_ACTIVE: u32 = 2;
const RES_SETTLING: u32 = 3;
const RES_EXPIRING: u32 = 4;
const RES_EXPIRED: u32 = 5;
const RES_FLUSHING: u32 = 6;

/// Slots where a reservation may be: the `WINDOW` that follow its id's position.
const WINDOW: usize = 64;
/// Ids a claim tries (each with its own window) before it looks at every slot.
const TRIES: usize = 8;
/// Open reservations a claim expires early when no slot is free.
const SWEEP: usize = 64;
/// Longest tenant, subject and organisation names a slot keeps (each is at most 256 bytes).
const NAMES: usize = 768;

/// One reservation. 912 bytes. Fields other than `state` are written only by the process that
/// moved `state` to `CLAIMED`, `SETTLING`, `EXPIRING` or `FLUSHING`.
#[repr(C)]
pub struct Resv {
    state: AtomicU32,
    db: u32,
    expires_at: i64,
    id: [u8; 16],
    key: Key,
    tenant_fp: u64,
    /// The estimate held.
    tokens: i64,
    /// What expiry charged (the estimate, or 0 when lenient), and when.
    charged: i64,
    charged_at: i64,
    owner_pid: i32,
    /// The state a taker returns the slot to when its transaction aborts.
    taken_from: u32,
    tenant_len: u16,
    subject_len: u16,
    _pad: u32,
    names: [u8; NAMES],
    /// The slot of the tenant's counters (`tenants`).
    tenant_slot: u32,
    /// The tenant's time zone (`zones`) when admitted: the flusher writes charges per local day.
    zone: u16,
    _pad2: u16,
    /// The cost estimate held (micro-units), and what expiry charged of it.
    cost: i64,
    cost_charged: i64,
    /// The organisation's entry that holds the reservation too (empty: none); its name follows
    /// the subject's in `names`.
    org: Key,
    org_len: u16,
    _reserved: [u8; 6],
}

const _: () = assert!(std::mem::size_of::<Resv>() == 912);

/// Who a reservation is for.
#[derive(Clone, Copy)]
pub struct Owner<'a> {
    pub db: u32,
    pub key: Key,
    pub tenant_fp: u64,
    /// The slot of the tenant's counters.
    pub tenant_slot: usize,
    /// The tenant's time zone.
    pub zone: u16,
    pub tenant: &'a str,
    pub subject: &'a str,
    /// The subject's organisation (its key and name), whose entry holds the reservation too.
    pub org: Option<(Key, &'a str)>,
}

/// An expired reservation's charge, on its way to the ledger.
#[derive(Clone, Debug)]
pub struct Charge {
    pub index: usize,
    pub id: [u8; 16],
    pub key: Key,
    /// The organisation's entry charged too (empty: none).
    pub org: Key,
    pub tokens: i64,
    /// Micro-units.
    pub cost: i64,
    pub at: i64,
    /// The tenant's time zone.
    pub zone: u16,
}

impl Shared {
    fn res(&self, i: usize) -> &Resv {
        unsafe { &*self.resv.add(i) }
    }

    #[allow(clippy::mut_from_ref)]
    fn res_mut(&self, i: usize) -> &mut Resv {
        unsafe { &mut *self.resv.add(i) }
    }

    fn cas(&self, i: usize, from: u32, to: u32) -> bool {
        self.res(i)
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Where a reservation with this id may be: the first slot of its window.
    fn home(&self, id: &[u8; 16]) -> usize {
        (crate::key::seeded_hash(id) % self.nres as u64) as usize
    }

    /// The slots of an id's window, in probing order.
    fn window(&self, id: &[u8; 16]) -> impl Iterator<Item = usize> {
        let (start, n) = (self.home(id), self.nres);
        (0..WINDOW.min(n)).map(move |k| (start + k) % n)
    }

    fn tag_of(&self, i: usize) -> &AtomicU32 {
        unsafe { &*self.tags.add(i) }
    }

    /// Claims a free slot in the window of a new random id. When `TRIES` windows are full, it
    /// looks at every slot; when none is free, `SWEEP` open reservations are expired (early: they
    /// are charged, not given back) and the flushers woken, and the claim waits for
    /// a slot to come free, up to `wait_ms`. `None` when none did. The slot is given back when
    /// the claim is dropped without being published.
    pub fn claim_reservation(&self, now: i64, wait_ms: u32) -> Option<Claim<'_>> {
        for _ in 0..TRIES {
            let id = random_id();
            let free =
                |i: usize| self.res(i).state.load(Ordering::Relaxed) == RES_FREE && self.cas(i, RES_FREE, RES_CLAIMED);
            if let Some(index) = self.window(&id).find(|&i| free(i)) {
                return Some(self.claimed(index, id));
            }
        }
        if let Some(c) = self.claim_any() {
            return Some(c);
        }
        self.sweep(now);
        self.want_slots();
        let mut waited = 0;
        loop {
            if let Some(c) = self.claim_any() {
                return Some(c);
            }
            if waited >= wait_ms {
                return None;
            }
            unsafe {
                pg_sys::pg_usleep(1_000);
                pg_sys::check_for_interrupts!();
            }
            waited += 1;
        }
    }

    fn claimed(&self, index: usize, id: [u8; 16]) -> Claim<'_> {
        Claim {
            sh: self,
            index,
            id,
            published: false,
        }
    }

    /// Claims any free slot (a scan from a random place), with a new random id whose window
    /// holds it: about `nres / WINDOW` ids are drawn.
    fn claim_any(&self) -> Option<Claim<'_>> {
        let n = self.nres;
        let start = self.home(&random_id());
        let index = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.res(i).state.load(Ordering::Relaxed) == RES_FREE && self.cas(i, RES_FREE, RES_CLAIMED))?;
        // Held by the claim from here: an error drawing ids gives the slot back.
        let mut claim = self.claimed(index, [0; 16]);
        loop {
            let id = random_id();
            if (index + n - self.home(&id)) % n < WINDOW.min(n) {
                claim.id = id;
                return Some(claim);
            }
        }
    }

    /// Marks slot `i` free.
    fn free_slot(&self, i: usize) {
        self.res(i).state.store(RES_FREE, Ordering::Release);
    }

    /// Expires up to `SWEEP` open reservations, due or not, scanning from a random slot.
    fn sweep(&self, now: i64) {
        let n = self.nres;
        let start = self.home(&random_id());
        let mut expired = 0;
        for i in (0..n).map(|k| (start + k) % n) {
            if expired >= SWEEP {
                break;
            }
            if self.res(i).state.load(Ordering::Acquire) == RES_ACTIVE && self.expire(i, now, true) {
                self.bump(Stat::ExpiredEarly);
                expired += 1;
            }
        }
    }

    /// Fills a claimed slot and makes it visible.
    fn publish(&self, i: usize, id: [u8; 16], owner: &Owner, hold: &Hold) {
        let r = self.res_mut(i);
        r.id = id;
        self.tag_of(i).store(tag(&id), Ordering::Relaxed);
        r.db = owner.db;
        r.key = owner.key;
        r.tenant_fp = owner.tenant_fp;
        r.tenant_slot = owner.tenant_slot as u32;
        r.zone = owner.zone;
        r.tokens = hold.tokens;
        r.cost = hold.cost;
        r.charged = 0;
        r.cost_charged = 0;
        r.charged_at = 0;
        r.expires_at = hold.expires_at;
        r.owner_pid = 0;
        let (org, org_name) = owner.org.unwrap_or_default();
        r.org = org;
        let mut at = 0;
        let mut put = |name: &str| {
            let n = name.len().min(NAMES - at);
            r.names[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
            at += n;
            n as u16
        };
        (r.tenant_len, r.subject_len, r.org_len) = (put(owner.tenant), put(owner.subject), put(org_name));
        r.state.store(RES_ACTIVE, Ordering::Release);
    }

    /// Expires reservation `i` if it is open and past its time (or at once with `early`): its
    /// hold becomes a charge in its subject's totals, and the slot waits for the flusher.
    fn expire(&self, i: usize, now: i64, early: bool) -> bool {
        if !self.cas(i, RES_ACTIVE, RES_EXPIRING) {
            return false;
        }
        let r = self.res_mut(i);
        if !early && r.expires_at > now {
            r.state.store(RES_ACTIVE, Ordering::Release);
            return false;
        }
        let (charged, cost_charged) = if crate::gucs::ON_EXPIRY.get() == crate::gucs::OnExpiry::Charge {
            (r.tokens, r.cost)
        } else {
            (0, 0)
        };
        let charge = [Effect::Charge {
            tokens_held: r.tokens,
            cost_held: r.cost,
            charged,
            cost_charged,
        }];
        self.settle(&r.key, r.db, now, &charge);
        if !r.org.is_empty() {
            self.settle(&r.org, r.db, now, &charge);
        }
        r.charged = charged;
        r.cost_charged = cost_charged;
        r.charged_at = now;
        let slot = r.tenant_slot as usize;
        r.state.store(RES_EXPIRED, Ordering::Release);
        self.bump(Stat::Expired);
        self.bump_usage(slot, Usage::Expired, 1);
        self.bump_usage(slot, Usage::ExpiredTokens, charged);
        true
    }

    /// Expires the reservations past their time: of one database (`db`), of one subject
    /// (`subject`), or all. With `all`, every open one of `db`, due or not (at shutdown). Returns
    /// how many it expired, and the earliest expiry among those left open.
    pub fn expire_reservations(&self, now: i64, db: Option<u32>, subject: Option<&Key>, all: bool) -> (i64, i64) {
        let mut expired = 0;
        let mut next = i64::MAX;
        for i in 0..self.nres {
            let r = self.res(i);
            if r.state.load(Ordering::Acquire) != RES_ACTIVE {
                continue;
            }
            let (k, rdb, exp) = unsafe {
                (
                    ptr::read_volatile(&r.key),
                    ptr::read_volatile(&r.db),
                    ptr::read_volatile(&r.expires_at),
                )
            };
            if db.is_some_and(|d| d != rdb) || subject.is_some_and(|s| *s != k) {
                continue;
            }
            if exp <= now || all {
                if self.expire(i, now, all) {
                    expired += 1;
                }
            } else {
                next = next.min(exp);
            }
        }
        if let (Some(k), Some(d)) = (subject, db) {
            let _ = self.with_entry(k, d, now, |s| s.next_expiry = if next == i64::MAX { 0 } else { next });
        }
        (expired, next)
    }

    /// Moves up to `max` expired reservations of `db` to flushing and returns their charges.
    pub fn take_charges(&self, db: u32, max: usize) -> Vec<Charge> {
        let mut out = Vec::new();
        for i in 0..self.nres {
            if out.len() >= max {
                break;
            }
            let r = self.res(i);
            if r.state.load(Ordering::Acquire) != RES_EXPIRED || unsafe { ptr::read_volatile(&r.db) } != db {
                continue;
            }
            if !self.cas(i, RES_EXPIRED, RES_FLUSHING) {
                continue;
            }
            self.res_mut(i).owner_pid = unsafe { pg_sys::MyProcPid };
            out.push(Charge {
                index: i,
                id: r.id,
                key: r.key,
                org: r.org,
                tokens: r.charged,
                cost: r.cost_charged,
                at: r.charged_at,
                zone: r.zone,
            });
        }
        out
    }

    /// The tenant, subject and organisation a charge taken by `take_charges` belongs to (its slot
    /// stays the flusher's until `end_flush`).
    pub fn charge_names(&self, c: &Charge) -> (String, String, Option<String>) {
        let r = self.res(c.index);
        let (tl, sl, ol) = (r.tenant_len as usize, r.subject_len as usize, r.org_len as usize);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            text(&r.names[..tl]),
            text(&r.names[tl..tl + sl]),
            (!r.org.is_empty()).then(|| text(&r.names[tl + sl..tl + sl + ol])),
        )
    }

    /// Ends a flush: the charges reached the ledger (`written`) and their slots are free, or they
    /// did not and wait for the next flush. Charges of one subject next to each other settle its
    /// entry once.
    pub fn end_flush(&self, db: u32, charges: &[Charge], written: bool, now: i64) {
        if !written {
            for c in charges {
                self.res(c.index).state.store(RES_EXPIRED, Ordering::Release);
            }
            return;
        }
        for run in charges.chunk_by(|a, b| a.key == b.key) {
            self.settle(&run[0].key, db, now, &[Effect::Flushed(run.len() as u32)]);
            for c in run.iter().filter(|c| !c.org.is_empty()) {
                self.settle(&c.org, db, now, &[Effect::Flushed(1)]);
            }
            for c in run {
                self.free_slot(c.index);
            }
        }
    }

    /// Puts every slot of `db` that this process left in flushing back to expired (a flusher
    /// exiting on an error).
    pub fn abandon_flush(&self, db: u32) {
        let me = unsafe { pg_sys::MyProcPid };
        for i in 0..self.nres {
            let r = self.res(i);
            if r.state.load(Ordering::Acquire) == RES_FLUSHING
                && unsafe { ptr::read_volatile(&r.db) } == db
                && unsafe { ptr::read_volatile(&r.owner_pid) } == me
            {
                r.state.store(RES_EXPIRED, Ordering::Release);
            }
        }
    }

    /// Frees every open or expired reservation of `db` without charging it (a new installation
    /// of the extension there: the ledger they belonged to is gone). Returns how many.
    pub fn forget_reservations(&self, db: u32) -> usize {
        let mut n = 0;
        for i in 0..self.nres {
            let r = self.res(i);
            if unsafe { ptr::read_volatile(&r.db) } != db {
                continue;
            }
            if self.cas(i, RES_ACTIVE, RES_FREE) || self.cas(i, RES_EXPIRED, RES_FREE) {
                n += 1;
            }
        }
        n
    }

    /// Open and expired reservations of `db`.
    pub fn reservations_of(&self, db: u32) -> (usize, usize) {
        let (mut open, mut expired) = (0, 0);
        for i in 0..self.nres {
            let r = self.res(i);
            let st = r.state.load(Ordering::Acquire);
            if st == RES_FREE || unsafe { ptr::read_volatile(&r.db) } != db {
                continue;
            }
            match st {
                RES_EXPIRED | RES_FLUSHING | RES_EXPIRING => expired += 1,
                _ => open += 1,
            }
        }
        (open, expired)
    }

    /// Finds a reservation by id and moves it to settling, owned by this backend, if `mine`
    /// says it belongs to the caller (by its subject's key and its tenant's fingerprint): one of
    /// another subject or tenant is `Unknown`, as is an id that names nothing, so that an answer
    /// tells nothing of other callers' reservations. An expired one is taken only with
    /// `expired_too` (a late record replaces its charge); without it, an open one past its time
    /// at `now` counts as expired too (the sweep has not reached it yet). Waits while the
    /// reservation is being expired or its charge written (milliseconds).
    pub fn take_reservation(
        &self,
        id: &[u8; 16],
        db: u32,
        now: i64,
        expired_too: bool,
        mine: impl Fn(&Key, u64) -> bool,
    ) -> Taken {
        let t = tag(id);
        for i in self.window(id) {
            if self.tag_of(i).load(Ordering::Relaxed) != t {
                continue;
            }
            if let Some(taken) = self.take_at(i, id, db, now, expired_too, &mine) {
                return taken;
            }
        }
        Taken::Unknown
    }

    /// `take_reservation` at slot `i`; None when the slot does not hold that id.
    fn take_at(
        &self,
        i: usize,
        id: &[u8; 16],
        db: u32,
        now: i64,
        expired_too: bool,
        mine: &impl Fn(&Key, u64) -> bool,
    ) -> Option<Taken> {
        let r = self.res(i);
        let same = || unsafe { ptr::read_volatile(&r.id) == *id && ptr::read_volatile(&r.db) == db };
        let owned = || unsafe { mine(&ptr::read_volatile(&r.key), ptr::read_volatile(&r.tenant_fp)) };
        for _ in 0..10_000 {
            let st = r.state.load(Ordering::Acquire);
            if st == RES_FREE || st == RES_CLAIMED || !same() {
                return None;
            }
            if !owned() {
                return Some(Taken::Unknown);
            }
            let from = match st {
                RES_ACTIVE if !expired_too && unsafe { ptr::read_volatile(&r.expires_at) } <= now => {
                    return Some(Taken::Expired)
                }
                RES_ACTIVE => RES_ACTIVE,
                RES_EXPIRED if expired_too => RES_EXPIRED,
                RES_EXPIRED => return Some(Taken::Expired),
                RES_SETTLING => return Some(Taken::Busy),
                RES_EXPIRING | RES_FLUSHING => {
                    unsafe {
                        pg_sys::pg_usleep(1_000);
                        pg_sys::check_for_interrupts!();
                    }
                    continue;
                }
                _ => return None,
            };
            if !self.cas(i, from, RES_SETTLING) {
                continue;
            }
            if !same() || !owned() {
                r.state.store(from, Ordering::Release);
                return Some(Taken::Unknown);
            }
            let rm = self.res_mut(i);
            rm.owner_pid = unsafe { pg_sys::MyProcPid };
            rm.taken_from = from;
            return Some(Taken::Held(Held {
                index: i,
                key: rm.key,
                org: (!rm.org.is_empty()).then_some(rm.org),
                tokens: rm.tokens,
                cost: rm.cost,
                expired: (from == RES_EXPIRED).then_some(Expired {
                    tokens: rm.charged,
                    cost: rm.cost_charged,
                    at: rm.charged_at,
                }),
            }));
        }
        Some(Taken::Busy)
    }

    /// Puts a reservation taken with `take_reservation` back (its settling transaction aborted).
    pub fn untake(&self, i: usize) {
        let r = self.res_mut(i);
        r.owner_pid = 0;
        r.state.store(r.taken_from, Ordering::Release);
    }

    /// Frees a taken reservation after it was settled.
    pub fn free_taken(&self, i: usize) {
        self.free_slot(i);
    }

    /// Releases a taken (open) reservation's hold and frees it (cp_release).
    pub fn release_taken(&self, h: &Held, db: u32, now: i64) {
        let release = [Effect::ReleaseHold {
            tokens: h.tokens,
            cost: h.cost,
        }];
        self.settle(&h.key, db, now, &release);
        if let Some(o) = h.org {
            self.settle(&o, db, now, &release);
        }
        self.free_taken(h.index);
        self.bump(Stat::Released);
    }

    pub fn reservations_in_use(&self) -> i64 {
        (0..self.nres)
            .filter(|&i| self.res(i).state.load(Ordering::Relaxed) != RES_FREE)
            .count() as i64
    }
}

/// A claimed reservation slot and the id it will be found by, not yet visible to anyone.
/// Dropping it gives the slot back.
pub struct Claim<'a> {
    sh: &'a Shared,
    index: usize,
    id: [u8; 16],
    published: bool,
}

impl Claim<'_> {
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// Fills the slot and makes the reservation visible.
    pub fn publish(mut self, owner: &Owner, hold: &Hold) {
        self.sh.publish(self.index, self.id, owner, hold);
        self.published = true;
    }
}

/// The tag of an id in its slot's tag (never 0, which no slot is probed for).
fn tag(id: &[u8; 16]) -> u32 {
    u32::from_le_bytes([id[0], id[1], id[2], id[3]]) | 1
}

/// Random bytes from `pg_strong_random` (OpenSSL's generator in builds with SSL), drawn 4 KiB
/// at a time per backend.
struct Entropy {
    buf: [u8; 4096],
    used: usize,
}

thread_local! {
    static ENTROPY: std::cell::RefCell<Entropy> =
        const { std::cell::RefCell::new(Entropy { buf: [0; 4096], used: 4096 }) };
}

/// A version-4 UUID of 122 bits from a cryptographic generator. Without one (it failed), the
/// backend stops with an error rather than hand out guessable capabilities.
pub fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    ENTROPY.with_borrow_mut(|e| {
        if e.used + 16 > e.buf.len() {
            if !unsafe { pg_sys::pg_strong_random(e.buf.as_mut_ptr().cast(), e.buf.len()) } {
                pgrx::error!("control_plane: could not generate random reservation ids");
            }
            e.used = 0;
        }
        id.copy_from_slice(&e.buf[e.used..e.used + 16]);
        e.buf[e.used..e.used + 16].fill(0);
        e.used += 16;
    });
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
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
    /// The organisation's entry that holds it too.
    pub org: Option<Key>,
    pub tokens: i64,
    /// The cost estimate held (micro-units).
    pub cost: i64,
    /// For an expired reservation: what its expiry charged, and when.
    pub expired: Option<Expired>,
}

/// What an expired reservation's expiry charged (tokens, micro-units), and when.
#[derive(Clone, Copy, Debug)]
pub struct Expired {
    pub tokens: i64,
    pub cost: i64,
    pub at: i64,
}

pub enum Taken {
    Held(Held),
    /// Expired (and charged); not taken.
    Expired,
    Busy,
    Unknown,
}
