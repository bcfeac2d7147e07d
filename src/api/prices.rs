//! Model prices (`control_plane.model_prices`), cached per backend until a committed change to
//! that table; which row is in force at an instant is decided by `money::price_at`.

use crate::catalog;
use crate::error::CpResult;
use crate::money::PriceRow;
use crate::shmem::Shared;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// (tenant, model) pairs a backend remembers before it forgets them all and reads again.
const MAX_MODELS: usize = 100_000;

#[derive(Default)]
struct Cache {
    /// The policy generation the rows were read at: a committed change to `model_prices` bumps it.
    generation: u64,
    rows: HashMap<(u32, String, String), Rc<[PriceRow]>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// The price rows of `model` for `tenant` (its own and the shared ones); `money::price_at` picks
/// the one in force at an instant.
pub fn rows_of(sh: &Shared, db: u32, tenant: &str, model: &str) -> CpResult<Rc<[PriceRow]>> {
    // Read before the rows, bumped after a change commits: rows read concurrently with a change
    // are read again next time.
    let generation = sh.policy_generation();
    let own_changes = crate::xact::has_policy_changes();
    let key = (db, tenant.to_string(), model.to_string());
    if !own_changes {
        let hit = CACHE.with_borrow_mut(|c| {
            if c.generation != generation {
                c.rows.clear();
                c.generation = generation;
            }
            c.rows.get(&key).cloned()
        });
        if let Some(rows) = hit {
            return Ok(rows);
        }
    }
    let rows: Rc<[PriceRow]> = catalog::model_prices(tenant, model)?.into();
    // A change this transaction has not committed is not for others (nor for after a rollback).
    if !own_changes {
        CACHE.with_borrow_mut(|c| {
            if c.rows.len() >= MAX_MODELS {
                c.rows.clear();
            }
            c.rows.insert(key, rows.clone());
        });
    }
    Ok(rows)
}
