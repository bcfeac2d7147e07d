//! Per-backend caches of subject rows, profile rows and organisation rows, each tagged with the shared-memory stamp
//! of what it was read from (see `Shared::subject_stamp` and `Shared::profile_stamp`). A committed
//! change bumps the version of exactly what it touched (one subject, one profile, or everything,
//! see `xact`), so a cached row is used only while its stamp is unchanged: no time-based expiry,
//! and a change to one subject costs only that subject's next admission a catalog read.
//!
//! The stamp is always read before the row it tags, and bumped only after the change committed:
//! a row read concurrently with a change is tagged with the old stamp and read again next time.
//! Organisation rows are tagged with the global generation: any change to `organizations` bumps it.

use crate::catalog;
use crate::error::{CpError, CpResult};
use crate::key::Key;
use crate::org::Organization;
use crate::policy::Policy;
use crate::shmem::{self, Shared};
use control_plane_core::bounded::{json_bytes, BoundedMap, RC_BYTES as RC};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::mem::size_of;
use std::rc::Rc;

/// Bytes of subject rows a backend keeps before that cache is emptied and refilled (about 50,000
/// subjects without overrides).
const SUBJECT_BYTES: usize = 16 << 20;
/// Bytes of profile rows, and of organisation rows, a backend keeps.
const PROFILE_BYTES: usize = 4 << 20;
const ORG_BYTES: usize = 4 << 20;

/// A subject's effective policy and where it comes from.
pub struct Cached {
    pub profile: Rc<str>,
    pub profile_id: i32,
    pub has_overrides: bool,
    pub active: bool,
    pub org_id: Option<String>,
    pub policy: Rc<Policy>,
}

impl Cached {
    /// What a shared-memory entry records about this subject, read at subject stamp `stamp`.
    pub fn stamp(&self, stamp: u64) -> shmem::PolicyStamp {
        let mut flags = 0;
        if self.active {
            flags |= shmem::POLICY_ACTIVE;
        }
        if self.has_overrides {
            flags |= shmem::POLICY_HAS_OVERRIDES;
        }
        if self.org_id.is_some() {
            flags |= shmem::POLICY_HAS_ORG;
        }
        shmem::PolicyStamp {
            stamp,
            profile_id: self.profile_id,
            flags,
        }
    }
}

/// Keys are already uniform 128-bit hashes: mixing their words is enough.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(29) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type KeyMap<V> = BoundedMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// What a subject's row says.
struct SubjectRow {
    stamp: u64,
    profile_id: i32,
    active: bool,
    org_id: Option<String>,
    overrides: Option<Value>,
    /// The effective policy, and the profile stamp it was merged at.
    merged: RefCell<Option<(u64, Rc<Cached>)>>,
}

impl SubjectRow {
    /// Heap bytes of the row and of the effective policy it will hold (merged from its profile:
    /// a policy of its own when it has overrides).
    fn heap_bytes(&self) -> usize {
        let own_policy = self
            .overrides
            .as_ref()
            .map_or(0, |o| RC + size_of::<Policy>() + 2 * json_bytes(o));
        RC + size_of::<SubjectRow>()
            + self.org_id.as_ref().map_or(0, String::len)
            + self
                .overrides
                .as_ref()
                .map_or(0, |o| size_of::<Value>() + json_bytes(o))
            + RC
            + size_of::<Cached>()
            + self.org_id.as_ref().map_or(0, String::len)
            + own_policy
    }
}

struct ProfileRow {
    stamp: u64,
    name: Rc<str>,
    policy: Rc<Policy>,
}

impl ProfileRow {
    fn heap_bytes(&self) -> usize {
        RC + size_of::<ProfileRow>() + RC + self.name.len() + RC + size_of::<Policy>() + self.policy.heap_bytes()
    }
}

/// An organisation's row and its key in shared memory.
pub struct Org {
    pub key: Key,
    pub name: Rc<str>,
    pub org: Organization,
}

struct Cache {
    generation: u64,
    subjects: KeyMap<Rc<SubjectRow>>,
    profiles: BoundedMap<i32, Rc<ProfileRow>>,
    orgs: KeyMap<Rc<Org>>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            generation: 0,
            subjects: BoundedMap::new(SUBJECT_BYTES),
            profiles: BoundedMap::new(PROFILE_BYTES),
            orgs: BoundedMap::new(ORG_BYTES),
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static ENROLLING: Cell<bool> = const { Cell::new(false) };
}

pub fn clear() {
    CACHE.with_borrow_mut(|c| {
        c.subjects.clear();
        c.profiles.clear();
        c.orgs.clear();
    });
}

/// True while `cp_admit` inserts an unknown subject: that insert changes no cached policy and
/// must not invalidate anything.
pub fn enrolling() -> bool {
    ENROLLING.get()
}

/// Empties the caches when something global changed (only to free memory: every stamp includes
/// the global generation).
fn refresh(sh: &Shared) {
    let generation = sh.policy_generation();
    CACHE.with_borrow_mut(|c| {
        if c.generation != generation {
            c.subjects.clear();
            c.profiles.clear();
            c.orgs.clear();
            c.generation = generation;
        }
    });
}

fn parse(s: &str, what: &str) -> CpResult<Value> {
    serde_json::from_str(s).map_err(|e| {
        CpError::state(
            format!("{what} holds a value control_plane cannot read"),
            Some(e.to_string()),
            Some("Values may nest at most 128 levels, and numbers must fit a double precision: correct the row."),
        )
    })
}

fn bad_policy(e: crate::policy::PolicyError) -> CpError {
    CpError::state(e.message, Some(e.detail), None)
}

/// A profile's row by id, from the cache or the catalog.
fn profile(sh: &Shared, id: i32) -> CpResult<Option<Rc<ProfileRow>>> {
    let stamp = sh.profile_stamp(id);
    if let Some(p) = CACHE.with_borrow(|c| c.profiles.get(&id).cloned()) {
        if p.stamp == stamp {
            return Ok(Some(p));
        }
    }
    sh.bump(shmem::Stat::ProfileReads);
    let Some(json) = catalog::load_profile(id)? else {
        return Ok(None);
    };
    let v = parse(&json, "profile")?;
    let name: Rc<str> = v.get("name").and_then(|n| n.as_str()).unwrap_or_default().into();
    let policy = Policy::from_profile(&v).map_err(bad_policy)?;
    let p = Rc::new(ProfileRow {
        stamp,
        name,
        policy: Rc::new(policy),
    });
    CACHE.with_borrow_mut(|c| c.profiles.insert(id, p.clone(), p.heap_bytes()));
    Ok(Some(p))
}

/// The effective policy of a subject row: its profile with its overrides applied.
fn effective(sh: &Shared, row: &SubjectRow, subject: &str) -> CpResult<Rc<Cached>> {
    let Some(p) = profile(sh, row.profile_id)? else {
        return Err(CpError::state(
            format!("the profile of subject \"{subject}\" does not exist"),
            None,
            Some("Assign the subject an existing profile in control_plane.subjects."),
        ));
    };
    if let Some((stamp, c)) = row.merged.borrow().as_ref() {
        if *stamp == p.stamp {
            return Ok(c.clone());
        }
    }
    let policy = match &row.overrides {
        None => p.policy.clone(),
        Some(o) => {
            let mut policy = (*p.policy).clone();
            policy.apply_overrides(o).map_err(bad_policy)?;
            Rc::new(policy)
        }
    };
    let c = Rc::new(Cached {
        profile: p.name.clone(),
        profile_id: row.profile_id,
        has_overrides: row.overrides.is_some(),
        active: row.active,
        org_id: row.org_id.clone(),
        policy,
    });
    *row.merged.borrow_mut() = Some((p.stamp, c.clone()));
    Ok(c)
}

/// Reads a subject's row from the catalog (enrolling an unknown subject when `enroll` is set).
fn load(sh: &Shared, tenant: &str, subject: &str, stamp: u64, enroll: bool) -> CpResult<Option<SubjectRow>> {
    sh.bump(shmem::Stat::SubjectReads);
    let row = match catalog::load_subject(tenant, subject)? {
        Some(r) => r,
        None if !enroll => return Ok(None),
        None => {
            struct Reset;
            impl Drop for Reset {
                fn drop(&mut self) {
                    ENROLLING.set(false);
                }
            }
            ENROLLING.set(true);
            let reset = Reset;
            let enrolled = catalog::enroll(tenant, subject)?;
            drop(reset);
            if !enrolled {
                return Err(CpError::state(
                    format!("tenant \"{tenant}\" has no default profile"),
                    Some(format!("subject \"{subject}\" is unknown and cannot be enrolled")),
                    Some("Mark one profile is_default (the preset \"free\" is the default unless it was changed)."),
                ));
            }
            catalog::load_subject(tenant, subject)?.ok_or_else(|| CpError::Retry {
                message: format!("subject \"{subject}\" was deleted by another transaction while being enrolled"),
            })?
        }
    };
    let Some(profile_id) = row.profile_id else {
        return Err(CpError::state(
            format!(
                "profile \"{}\" of subject \"{subject}\" does not exist",
                row.profile_name
            ),
            None,
            Some("Assign the subject an existing profile in control_plane.subjects."),
        ));
    };
    let overrides = match row.overrides.as_deref() {
        Some(o) => Some(parse(o, "overrides")?),
        None => None,
    };
    Ok(Some(SubjectRow {
        stamp,
        profile_id,
        active: row.active,
        org_id: row.org_id,
        overrides,
        merged: RefCell::new(None),
    }))
}

/// The subject's row from the cache, or from the catalog (then cached).
fn subject_row(sh: &Shared, key: &Key, tenant: &str, subject: &str, enroll: bool) -> CpResult<Option<Rc<SubjectRow>>> {
    let stamp = sh.subject_stamp(key);
    if let Some(r) = CACHE.with_borrow(|c| c.subjects.get(key).cloned()) {
        if r.stamp == stamp {
            return Ok(Some(r));
        }
    }
    let Some(row) = load(sh, tenant, subject, stamp, enroll)? else {
        return Ok(None);
    };
    let row = Rc::new(row);
    CACHE.with_borrow_mut(|c| c.subjects.insert(*key, row.clone(), row.heap_bytes()));
    Ok(Some(row))
}

/// The policy for an admission, and the stamp to record in the subject's shared-memory entry
/// when its row was read from the catalog. Subjects without overrides whose entry already knows
/// their profile (at the current subject stamp) need no catalog read at all, even in a backend
/// that has never seen them: this is what keeps a million subjects as fast as a thousand.
/// `own_changes`: the calling transaction has changed policy rows it has not committed yet
/// (neither in the entry nor for others to see: read from the catalog, publish nothing).
pub fn for_admission(
    key: &Key,
    db: u32,
    tenant: &str,
    subject: &str,
    own_changes: bool,
) -> CpResult<(Rc<Cached>, Option<shmem::PolicyStamp>)> {
    let sh = shmem::shared()?;
    refresh(sh);
    let stamp = sh.subject_stamp(key);
    if let Some(r) = CACHE.with_borrow(|c| c.subjects.get(key).cloned()) {
        if r.stamp == stamp {
            return Ok((effective(sh, &r, subject)?, None));
        }
    }
    if let Some(st) = (!own_changes).then(|| sh.peek_policy(key, db)).flatten() {
        // A subject with overrides or an organisation takes them from its row.
        let read_row = shmem::POLICY_HAS_OVERRIDES | shmem::POLICY_HAS_ORG;
        if st.stamp == stamp && st.flags & read_row == 0 && st.profile_id != 0 {
            if let Some(p) = profile(sh, st.profile_id)? {
                let cached = Cached {
                    profile: p.name.clone(),
                    profile_id: st.profile_id,
                    has_overrides: false,
                    active: st.flags & shmem::POLICY_ACTIVE != 0,
                    org_id: None,
                    policy: p.policy.clone(),
                };
                return Ok((Rc::new(cached), None));
            }
        }
    }
    let row = subject_row(sh, key, tenant, subject, true)?
        .ok_or_else(|| CpError::Internal("enrolled subject has no policy".into()))?;
    let c = effective(sh, &row, subject)?;
    let published = (!own_changes).then(|| c.stamp(row.stamp));
    Ok((c, published))
}

/// The subject's effective policy. An unknown subject is enrolled in the tenant's default profile
/// when `enroll` is set; otherwise `None` is returned for it.
pub fn get(key: &Key, tenant: &str, subject: &str, enroll: bool) -> CpResult<Option<Rc<Cached>>> {
    let sh = shmem::shared()?;
    refresh(sh);
    match subject_row(sh, key, tenant, subject, enroll)? {
        Some(row) => Ok(Some(effective(sh, &row, subject)?)),
        None => Ok(None),
    }
}

/// The row of organisation `name` of the tenant, from the cache or the catalog. Every subject that
/// names it exists only while it does (a foreign key): a missing row is an error (55000).
pub fn org(db: u32, tenant: &str, name: &str) -> CpResult<Rc<Org>> {
    let sh = shmem::shared()?;
    refresh(sh);
    let key = Key::org(db, tenant, name);
    if let Some(o) = CACHE.with_borrow(|c| c.orgs.get(&key).cloned()) {
        return Ok(o);
    }
    let Some(org) = catalog::load_org(tenant, name)? else {
        return Err(CpError::state(
            format!("organization \"{name}\" of tenant \"{tenant}\" does not exist"),
            None,
            Some("Insert it into control_plane.organizations."),
        ));
    };
    let o = Rc::new(Org {
        key,
        name: name.into(),
        org,
    });
    let bytes = RC + size_of::<Org>() + RC + name.len() + o.org.budgets.heap_bytes();
    CACHE.with_borrow_mut(|c| c.orgs.insert(key, o.clone(), bytes));
    Ok(o)
}
