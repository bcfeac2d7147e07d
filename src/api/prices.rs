//! Model prices (`control_plane.model_prices`), cached per backend until a committed change to
//! that table. Which rows price a model name (its own, else its longest family such as
//! `gpt-4o*`) is decided by `price_names::PricedNames`; which row is in force at an instant by
//! `money::price_at`.

use crate::catalog;
use crate::error::CpResult;
use crate::money::PriceRow;
use crate::shmem::Shared;
use control_plane_core::bounded::{BoundedMap, RC_BYTES as RC};
use control_plane_core::price_names::PricedNames;
use std::cell::RefCell;
use std::mem::size_of;
use std::rc::Rc;

/// Bytes of price rows a backend keeps before it forgets them all and reads again.
const ROW_BYTES: usize = 4 << 20;
/// Bytes of tenants' priced model names a backend keeps before it forgets them all.
const PRICED_BYTES: usize = 4 << 20;

struct Cache {
    /// The policy generation the rows were read at: a committed change to `model_prices` bumps it.
    generation: u64,
    /// The model names with a price row for a tenant (its own or shared), by (database, tenant):
    /// a name outside it has no price, without a lookup and without an entry of its own, so the
    /// names callers send cannot grow the cache (it holds what admins wrote).
    priced: BoundedMap<(u32, String), Rc<PricedNames>>,
    rows: BoundedMap<(u32, String, String), Rc<[PriceRow]>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache {
        generation: 0,
        priced: BoundedMap::new(PRICED_BYTES),
        rows: BoundedMap::new(ROW_BYTES),
    });
}

/// The price rows that price `model` for `tenant` (of its own name, else of its longest family;
/// the tenant's own and the shared ones); `money::price_at` picks the one in force at an instant.
pub fn rows_of(sh: &Shared, db: u32, tenant: &str, model: &str) -> CpResult<Rc<[PriceRow]>> {
    // Read before the rows, bumped after a change commits: rows read concurrently with a change
    // are read again next time.
    let generation = sh.policy_generation();
    let own_changes = crate::xact::has_policy_changes();
    let known = (!own_changes)
        .then(|| {
            CACHE.with_borrow_mut(|c| {
                if c.generation != generation {
                    c.rows.clear();
                    c.priced.clear();
                    c.generation = generation;
                }
                c.priced.get(&(db, tenant.to_string())).cloned()
            })
        })
        .flatten();
    let priced = match known {
        Some(p) => p,
        None => {
            let names = Rc::new(PricedNames::new(catalog::priced_models(tenant)?));
            // A change this transaction has not committed is not for others.
            if !own_changes {
                let bytes = tenant.len() + RC + names.heap_bytes();
                CACHE.with_borrow_mut(|c| c.priced.insert((db, tenant.to_string()), names.clone(), bytes));
            }
            names
        }
    };
    let Some(name) = priced.price_name(model) else {
        return Ok(Rc::from(Vec::new()));
    };
    let key = (db, tenant.to_string(), name.into_owned());
    if !own_changes {
        if let Some(rows) = CACHE.with_borrow(|c| c.rows.get(&key).cloned()) {
            return Ok(rows);
        }
    }
    let rows: Rc<[PriceRow]> = catalog::model_prices(tenant, &key.2)?.into();
    // A change this transaction has not committed is not for others (nor for after a rollback).
    if !own_changes {
        let bytes = key.1.len() + key.2.len() + RC + size_of::<PriceRow>() * rows.len();
        CACHE.with_borrow_mut(|c| c.rows.insert(key, rows.clone(), bytes));
    }
    Ok(rows)
}
