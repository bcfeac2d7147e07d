//! Per-backend cache of effective policies, keyed by subject fingerprint and tagged with the
//! shared policy generation. A committed change to profiles or subjects bumps the generation
//! (see `xact`), and every backend drops its cache at its next call: no time-based expiry.

use crate::catalog;
use crate::error::{CpError, CpResult};
use crate::key::Key;
use crate::policy::Policy;
use crate::shmem;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Entries kept per backend before the cache is emptied and refilled.
const MAX_ENTRIES: usize = 200_000;

pub struct Cached {
    pub profile: Rc<str>,
    pub profile_id: i32,
    pub has_overrides: bool,
    pub active: bool,
    pub org_id: Option<String>,
    pub policy: Rc<Policy>,
}

impl Cached {
    /// What a shared-memory entry records about this policy, read at `generation`.
    pub fn stamp(&self, generation: u64) -> shmem::PolicyStamp {
        let mut flags = 0;
        if self.active {
            flags |= shmem::POLICY_ACTIVE;
        }
        if self.has_overrides {
            flags |= shmem::POLICY_HAS_OVERRIDES;
        }
        shmem::PolicyStamp {
            generation,
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

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

#[derive(Default)]
struct Cache {
    generation: u64,
    map: KeyMap<Rc<Cached>>,
    /// Profiles by `profiles.id`: (name, policy without overrides).
    profiles: HashMap<i32, (Rc<str>, Rc<Policy>)>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
    static ENROLLING: Cell<bool> = const { Cell::new(false) };
}

pub fn clear() {
    CACHE.with_borrow_mut(|c| {
        c.map.clear();
        c.profiles.clear();
    });
}

/// True while `cp_admit` inserts an unknown subject: that insert changes no cached policy and
/// must not invalidate every backend's cache.
pub fn enrolling() -> bool {
    ENROLLING.get()
}

fn build(row: catalog::SubjectRow, subject: &str) -> CpResult<Cached> {
    let Some(pj) = row.profile_json else {
        return Err(CpError::state(
            format!(
                "profile \"{}\" of subject \"{subject}\" does not exist",
                row.profile_name
            ),
            None,
            Some("Assign the subject an existing profile in control_plane.subjects."),
        ));
    };
    let parse = |s: &str, what: &str| {
        serde_json::from_str::<serde_json::Value>(s)
            .map_err(|e| CpError::Internal(format!("{what} is not valid JSON: {e}")))
    };
    let bad = |e: crate::policy::PolicyError| CpError::state(e.message, Some(e.detail), None);
    let mut policy = Policy::from_profile(&parse(&pj, "profile")?).map_err(bad)?;
    if let Some(o) = row.overrides.as_deref() {
        policy.apply_overrides(&parse(o, "overrides")?).map_err(bad)?;
    }
    Ok(Cached {
        profile: row.profile_name.into(),
        profile_id: row.profile_id.unwrap_or(0),
        has_overrides: row.overrides.is_some(),
        active: row.active,
        org_id: row.org_id,
        policy: Rc::new(policy),
    })
}

fn refresh(generation: u64) {
    CACHE.with_borrow_mut(|c| {
        if c.generation != generation {
            c.map.clear();
            c.profiles.clear();
            c.generation = generation;
        }
    });
}

/// A profile's policy by id, from the cache or the catalog.
fn profile(id: i32, generation: u64) -> CpResult<Option<(Rc<str>, Rc<Policy>)>> {
    if let Some(p) = CACHE.with_borrow(|c| c.profiles.get(&id).cloned()) {
        return Ok(Some(p));
    }
    let Some(json) = catalog::load_profile(id)? else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| CpError::Internal(format!("profile is not valid JSON: {e}")))?;
    let name: Rc<str> = v.get("name").and_then(|n| n.as_str()).unwrap_or_default().into();
    let policy = Policy::from_profile(&v).map_err(|e| CpError::state(e.message, Some(e.detail), None))?;
    let p = (name, Rc::new(policy));
    CACHE.with_borrow_mut(|c| {
        if c.generation == generation {
            c.profiles.insert(id, p.clone());
        }
    });
    Ok(Some(p))
}

/// The policy for an admission, and the stamp to record in the subject's shared-memory entry
/// when it was read from the catalog. Subjects without overrides whose entry already knows their
/// profile (at the current generation) need no catalog read at all: this is what keeps a million
/// subjects as fast as a thousand.
pub fn for_admission(
    key: &Key,
    db: u32,
    tenant: &str,
    subject: &str,
) -> CpResult<(Rc<Cached>, Option<shmem::PolicyStamp>)> {
    let sh = shmem::shared()?;
    let generation = sh.policy_generation();
    refresh(generation);
    if let Some(c) = CACHE.with_borrow(|c| c.map.get(key).cloned()) {
        return Ok((c, None));
    }
    // This transaction's own uncommitted changes are neither in the entry nor for others to see.
    let own_changes = crate::xact::has_policy_changes();
    if let Some(st) = (!own_changes).then(|| sh.peek_policy(key, db)).flatten() {
        if st.generation == generation && st.flags & shmem::POLICY_HAS_OVERRIDES == 0 && st.profile_id != 0 {
            if let Some(p) = profile(st.profile_id, generation)? {
                let cached = Cached {
                    profile: p.0.clone(),
                    profile_id: st.profile_id,
                    has_overrides: false,
                    active: st.flags & shmem::POLICY_ACTIVE != 0,
                    org_id: None,
                    policy: p.1.clone(),
                };
                return Ok((Rc::new(cached), None));
            }
        }
    }
    let c =
        get(key, tenant, subject, true)?.ok_or_else(|| CpError::Internal("enrolled subject has no policy".into()))?;
    let stamp = (!own_changes).then(|| c.stamp(generation));
    Ok((c, stamp))
}

/// The subject's effective policy. An unknown subject is enrolled in the tenant's default profile
/// when `enroll` is set; otherwise `None` is returned for it.
pub fn get(key: &Key, tenant: &str, subject: &str, enroll: bool) -> CpResult<Option<Rc<Cached>>> {
    let sh = shmem::shared()?;
    let generation = sh.policy_generation();
    refresh(generation);
    let hit = CACHE.with_borrow(|c| c.map.get(key).cloned());
    if hit.is_some() {
        return Ok(hit);
    }
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
            catalog::load_subject(tenant, subject)?
                .ok_or_else(|| CpError::Internal(format!("subject \"{subject}\" vanished while being enrolled")))?
        }
    };
    let cached = Rc::new(build(row, subject)?);
    CACHE.with_borrow_mut(|c| {
        if c.generation == generation {
            if c.map.len() >= MAX_ENTRIES {
                c.map.clear();
            }
            c.map.insert(*key, cached.clone());
        }
    });
    Ok(Some(cached))
}
