//! Work that reaches shared memory only when the transaction commits.
//!
//! `cp_record_usage` queues its ledger row here; the commit callback adds it to the totals and
//! settles the reservation. An abort (or the rollback of the subtransaction that queued it) drops
//! the work and gives the reservation back to its owner. Admin changes to profiles and subjects
//! queue a bump of the version of what they touched (one subject, one profile, or everything),
//! applied after commit so that no backend can cache the old rows under the new version. Alert
//! marks set by this transaction (money alerts it wrote) are cleared again if it aborts, so that
//! the next admission past the threshold raises the alert again.

use crate::key::Key;
use crate::shmem::{self, Effect};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

pub struct Pending {
    pub subid: pg_sys::SubTransactionId,
    pub key: Key,
    /// The organisation the row is recorded for (its entry counts the row too).
    pub org: Option<Key>,
    pub db: u32,
    /// The slot of the tenant's counters (`control_plane.tenant_stats`).
    pub tenant_slot: usize,
    pub at_unix_us: i64,
    pub input: i64,
    pub output: i64,
    /// Micro-units (0 when unpriced).
    pub cost: i64,
    /// The reservation slot this row settles, taken by this transaction.
    pub reservation: Option<Settles>,
    /// A reversal row this transaction wrote for a charge already in the ledger.
    pub reversal: Option<Reversal>,
}

/// A reversal row of a charge already in the ledger: the charge's time, tokens and micro-units,
/// and the organisation it was charged to.
#[derive(Clone, Copy, Debug)]
pub struct Reversal {
    pub at: i64,
    pub tokens: i64,
    pub cost: i64,
    pub org: Option<Key>,
}

/// What settling a taken reservation slot ends.
#[derive(Clone, Copy, Debug)]
pub enum Settles {
    /// An open reservation's hold (tokens and micro-units).
    Hold {
        index: usize,
        tokens: i64,
        cost: i64,
        org: Option<Key>,
    },
    /// An expired reservation's charge, not yet written to the ledger: it is replaced.
    Charge {
        index: usize,
        tokens: i64,
        cost: i64,
        at: i64,
        org: Option<Key>,
    },
}

impl Settles {
    fn index(&self) -> usize {
        match *self {
            Settles::Hold { index, .. } | Settles::Charge { index, .. } => index,
        }
    }

    /// The effects of settling on the subject's entry, and on the organisation's entry that held
    /// the reservation too.
    fn effects(&self) -> (Option<Key>, [Option<Effect>; 2]) {
        match *self {
            Settles::Hold { tokens, cost, org, .. } => (org, [Some(Effect::ReleaseHold { tokens, cost }), None]),
            Settles::Charge {
                tokens, cost, at, org, ..
            } => (
                org,
                [Some(Effect::taken_back(at, tokens, cost)), Some(Effect::Flushed(1))],
            ),
        }
    }
}

/// What a committed admin change makes every backend read again.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// One subject's row.
    Subject(Key),
    /// One profile's row (its id, name and tenant unchanged).
    Profile(i32),
    /// Anything: profiles added, removed or renamed, tables truncated.
    All,
}

/// Changes queued beyond this many in one transaction become one `Change::All`.
const MAX_CHANGES: usize = 10_000;

#[derive(Default)]
struct State {
    registered: bool,
    pending: Vec<Pending>,
    /// Changed policy rows, by the subtransaction that changed them (a rolled-back one changes
    /// nothing).
    policy_changed: Vec<(pg_sys::SubTransactionId, Change)>,
    /// Alert marks set on entries (key, database, bits), by subtransaction.
    marks: Vec<(pg_sys::SubTransactionId, Key, u32, u8)>,
    /// This transaction inserted ledger rows on the fast path of sealing: their oldest time is
    /// published in shared memory until it ends.
    rows_published: bool,
    /// Ids of the ledger rows it inserted on the slow path (dated in the past), added to their
    /// buckets just before it commits if they are inside the seal.
    dated_rows: Vec<i64>,
    /// Entries (key, database) of subjects and organisations whose ledger rows this transaction
    /// inserted directly (not through the extension): marked stale when it ends.
    direct: std::collections::HashSet<(Key, u32)>,
    /// Expired charges this transaction writes to the ledger (`cp_cleanup` where no flusher
    /// runs), by subtransaction and database: their slots are freed at commit.
    charges: Vec<(pg_sys::SubTransactionId, u32, Vec<shmem::Charge>)>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn ensure_registered(st: &mut State) {
    if !st.registered {
        unsafe {
            pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        }
        st.registered = true;
    }
}

pub fn current_subid() -> pg_sys::SubTransactionId {
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

pub fn push(p: Pending) {
    STATE.with_borrow_mut(|st| {
        ensure_registered(st);
        st.pending.push(p);
    });
}

/// The ledger rows this transaction wrote through `cp_record_usage` for a subject or an
/// organisation (by its entry's key), not yet committed: (time, [requests, input, output, cost]).
/// A rebuild reads them from the ledger (its snapshot sees this transaction's writes) and must
/// leave them out, since the commit adds them.
pub fn uncommitted_rows(key: &Key, db: u32) -> Vec<(i64, [i64; 4])> {
    STATE.with_borrow(|st| {
        let mut rows = Vec::new();
        for p in st.pending.iter().filter(|p| p.db == db) {
            if p.key == *key || p.org == Some(*key) {
                rows.push((p.at_unix_us, [1, p.input, p.output, p.cost]));
            }
            if let Some(r) = p.reversal.filter(|r| p.key == *key || r.org == Some(*key)) {
                rows.push((r.at, [-1, -r.tokens, 0, -r.cost]));
            }
        }
        rows
    })
}

/// The key of `cp_cleanup`'s transaction-level locks: one compaction at a time.
pub const COMPACTION_LOCK: u32 = 2;
/// ... and the seal of the ledger (`crate::sealing`).
pub const SEAL_LOCK: u32 = 3;
/// The fourth field of the extension's advisory lock tags: `pg_advisory_lock` and its kin only
/// ever set 1 or 2 there, so no SQL can take (or wait on) these locks.
pub const LOCK_SPACE: u16 = 0x4353;

/// Takes the lock `key` of this database in `mode` until the transaction ends (shown in
/// `pg_locks` as an advisory lock with objid `key` and objsubid 17235, which no SQL function can
/// take). Without `wait`, false when another transaction holds a conflicting one.
pub fn advisory_xact_lock(key: u32, mode: u32, wait: bool) -> bool {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: 1_668_243_311,
        locktag_field3: key,
        locktag_field4: LOCK_SPACE,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    let r = unsafe { pg_sys::LockAcquire(&tag, mode as i32, false, !wait) };
    r != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// This transaction inserted a ledger row: published in shared memory (fast path), or dated in
/// the past with id `dated` (slow path; see `crate::sealing`).
pub fn ledger_row(published: bool, dated: Option<i64>) {
    STATE.with_borrow_mut(|st| {
        ensure_registered(st);
        st.rows_published |= published;
        st.dated_rows.extend(dated);
    });
}

/// This transaction inserted a ledger row directly for the subject `key` (and its organisation's
/// entry `org`) of database `db`.
pub fn direct_row(key: Key, org: Option<Key>, db: u32) {
    STATE.with_borrow_mut(|st| {
        ensure_registered(st);
        for k in std::iter::once(key).chain(org) {
            st.direct.insert((k, db));
        }
    });
}

/// This transaction writes the expired charges `charges` of database `db` (taken for flushing):
/// a commit frees their slots, an abort (or the rollback of this subtransaction) puts them back.
pub fn charges_taken(db: u32, charges: Vec<shmem::Charge>) {
    STATE.with_borrow_mut(|st| {
        ensure_registered(st);
        st.charges.push((current_subid(), db, charges));
    });
}

/// Ends the flushes of charges a transaction took: written (committed) or not.
fn end_charges(flushes: Vec<(pg_sys::SubTransactionId, u32, Vec<shmem::Charge>)>, written: bool) {
    if flushes.is_empty() {
        return;
    }
    let Ok(sh) = shmem::shared() else { return };
    let now = crate::catalog::now_unix_us();
    for (_, db, charges) in flushes {
        sh.end_flush(db, &charges, written, now);
        if written {
            sh.bump_by(shmem::Stat::ChargesWritten, charges.len() as u64);
        }
    }
}

/// True when this transaction inserted ledger rows.
pub fn inserted_ledger_rows() -> bool {
    STATE.with_borrow(|st| st.rows_published || !st.dated_rows.is_empty() || !st.direct.is_empty())
}

/// The ids of the rows dated in the past that this transaction inserted (in no bucket yet).
pub fn dated_rows() -> Vec<i64> {
    STATE.with_borrow(|st| st.dated_rows.clone())
}

/// The end of the transaction for sealing: its rows are committed and visible, or gone. The
/// entries of rows inserted directly read their totals again (the ledger locks taken for them
/// are still held: no rebuild runs in between).
fn end_ledger_rows() {
    let (published, direct) = STATE.with_borrow_mut(|st| {
        st.dated_rows.clear();
        (std::mem::take(&mut st.rows_published), std::mem::take(&mut st.direct))
    });
    if !direct.is_empty() {
        if let Ok(sh) = shmem::shared() {
            for (k, db) in &direct {
                sh.mark_stale(k, *db);
            }
        }
    }
    if published {
        if let Ok(sh) = shmem::shared() {
            sh.clear_open_rows();
        }
    }
}

/// Alert marks this transaction set on an entry, for the alerts it is writing: cleared if it
/// aborts (or the subtransaction does).
pub fn alerts_marked(key: Key, db: u32, bits: u8) {
    let subid = current_subid();
    STATE.with_borrow_mut(|st| {
        ensure_registered(st);
        st.marks.push((subid, key, db, bits));
    });
}

fn unmark(marks: &[(pg_sys::SubTransactionId, Key, u32, u8)]) {
    if marks.is_empty() {
        return;
    }
    let Ok(sh) = shmem::shared() else { return };
    let now = crate::catalog::now_unix_us();
    for (_, key, db, bits) in marks {
        sh.with_marks(key, *db, now, |_, m| *m &= !bits);
    }
}

/// Called by the policy triggers: forget the local cache now, bump what changed at commit.
pub fn policy_changed(change: Change) {
    crate::policy_cache::clear();
    let subid = current_subid();
    STATE.with_borrow_mut(|st| {
        ensure_registered(st);
        if st.policy_changed.len() >= MAX_CHANGES {
            st.policy_changed.retain(|(s, _)| *s != subid);
            st.policy_changed.push((subid, Change::All));
        } else {
            st.policy_changed.push((subid, change));
        }
    });
}

/// True when this transaction changed profiles or subjects (not yet committed): policies must
/// then be read from the catalog, and not published to shared memory.
pub fn has_policy_changes() -> bool {
    STATE.with_borrow(|st| !st.policy_changed.is_empty())
}

fn undo(p: &Pending) {
    if let (Some(r), Ok(sh)) = (p.reservation, shmem::shared()) {
        sh.untake(r.index());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => {
            // May raise: the transaction then aborts, rows and buckets together.
            let dated = STATE.with_borrow_mut(|st| std::mem::take(&mut st.dated_rows));
            if !dated.is_empty() {
                if let Err(e) = crate::sealing::bucket_dated_rows(&dated) {
                    crate::error::raise(e);
                }
            }
        }
        XACT_EVENT_PRE_PREPARE => {
            // (A prepared alert row would make every later admission that owes the same alert
            // wait on its unique index until COMMIT PREPARED; a prepared ledger row could be
            // committed after a sealing passed its time.)
            let busy = STATE.with_borrow(|st| {
                !st.pending.is_empty()
                    || !st.marks.is_empty()
                    || st.rows_published
                    || !st.dated_rows.is_empty()
                    || !st.direct.is_empty()
                    || !st.charges.is_empty()
            });
            if busy {
                crate::error::raise(crate::error::CpError::NotSupported {
                    message:
                        "cannot PREPARE a transaction that inserted control_plane ledger rows or wrote a money alert"
                            .into(),
                    hint: Some("Call cp_admit and cp_record_usage outside two-phase transactions.".into()),
                });
            }
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            // Must not raise: the transaction is already committed (and visible).
            end_ledger_rows();
            let (work, changed, charges) = STATE.with_borrow_mut(|st| {
                st.marks.clear();
                (
                    std::mem::take(&mut st.pending),
                    std::mem::take(&mut st.policy_changed),
                    std::mem::take(&mut st.charges),
                )
            });
            end_charges(charges, true);
            let Ok(sh) = shmem::shared() else { return };
            let now = crate::catalog::now_unix_us();
            for p in &work {
                // What moves on the subject's entry, and on organisations' entries (the one the
                // row is recorded for, the one that held the reservation, the one charged with
                // what a reversal takes back: the same one unless the subject moved meanwhile).
                let row = Effect::Row {
                    at: p.at_unix_us,
                    requests: 1,
                    input: p.input,
                    output: p.output,
                    cost: p.cost,
                };
                let mut effects = vec![row];
                let mut orgs: Vec<(Key, Effect)> = p.org.map(|o| (o, row)).into_iter().collect();
                if let Some(r) = p.reservation {
                    let (org, es) = r.effects();
                    for e in es.into_iter().flatten() {
                        effects.push(e);
                        orgs.extend(org.map(|o| (o, e)));
                    }
                }
                if let Some(r) = p.reversal {
                    let e = Effect::taken_back(r.at, r.tokens, r.cost);
                    effects.push(e);
                    orgs.extend(r.org.map(|o| (o, e)));
                }
                sh.settle(&p.key, p.db, now, &effects);
                for run in orgs.chunk_by(|a, b| a.0 == b.0) {
                    let es: Vec<Effect> = run.iter().map(|(_, e)| *e).collect();
                    sh.settle(&run[0].0, p.db, now, &es);
                }
                sh.bump_usage(p.tenant_slot, shmem::Usage::Recorded, 1);
                sh.bump_usage(p.tenant_slot, shmem::Usage::InputTokens, p.input);
                sh.bump_usage(p.tenant_slot, shmem::Usage::OutputTokens, p.output);
                if let Some(r) = p.reservation {
                    sh.free_taken(r.index());
                    sh.bump(shmem::Stat::Settled);
                }
            }
            for (_, c) in changed {
                match c {
                    Change::Subject(k) => sh.bump_subject(&k),
                    Change::Profile(id) => sh.bump_profile(id),
                    Change::All => sh.bump_policy_generation(),
                }
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            end_ledger_rows();
            let (work, changed, marks, charges) = STATE.with_borrow_mut(|st| {
                (
                    std::mem::take(&mut st.pending),
                    !std::mem::take(&mut st.policy_changed).is_empty(),
                    std::mem::take(&mut st.marks),
                    std::mem::take(&mut st.charges),
                )
            });
            end_charges(charges, false);
            work.iter().for_each(undo);
            unmark(&marks);
            if changed {
                crate::policy_cache::clear();
            }
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    parent_subid: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            let (dropped, changed, marks, charges) = STATE.with_borrow_mut(|st| {
                let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut st.pending)
                    .into_iter()
                    .partition(|p| p.subid == my_subid);
                st.pending = kept;
                let (unwritten, charges): (Vec<_>, Vec<_>) = std::mem::take(&mut st.charges)
                    .into_iter()
                    .partition(|c| c.0 == my_subid);
                st.charges = charges;
                let before = st.policy_changed.len();
                st.policy_changed.retain(|(s, _)| *s != my_subid);
                let (unmarked, marked): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut st.marks).into_iter().partition(|m| m.0 == my_subid);
                st.marks = marked;
                (gone, before != st.policy_changed.len(), unmarked, unwritten)
            });
            end_charges(charges, false);
            dropped.iter().for_each(undo);
            unmark(&marks);
            if changed {
                crate::policy_cache::clear();
            }
        }
        SUBXACT_EVENT_COMMIT_SUB => STATE.with_borrow_mut(|st| {
            st.pending
                .iter_mut()
                .filter(|p| p.subid == my_subid)
                .for_each(|p| p.subid = parent_subid);
            st.policy_changed
                .iter_mut()
                .filter(|(s, _)| *s == my_subid)
                .for_each(|(s, _)| *s = parent_subid);
            st.marks
                .iter_mut()
                .filter(|m| m.0 == my_subid)
                .for_each(|m| m.0 = parent_subid);
            st.charges
                .iter_mut()
                .filter(|c| c.0 == my_subid)
                .for_each(|c| c.0 = parent_subid);
        }),
        _ => {}
    }
}
