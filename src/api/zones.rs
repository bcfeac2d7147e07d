//! Tenants' time zones: which zone a tenant's days and months follow (`control_plane.tenants`,
//! UTC without a row) and whether the tenant has a row at all, cached per backend until a
//! committed change to that table; and the SQL helpers that validate a zone and give compaction
//! its local days.

use crate::calendar::Window;
use crate::catalog::{self, PG_EPOCH_OFFSET_US};
use crate::error::{CpError, CpResult};
use crate::shmem::{Shared, UTC};
use crate::zone::Zone;
use control_plane_core::bounded::BoundedMap;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use std::cell::RefCell;

/// Bytes of tenants' zones a backend keeps before it forgets them all and reads again (tens of
/// thousands of tenants; names are at most 256 bytes).
const ZONE_BYTES: usize = 4 << 20;

/// What a backend knows of a tenant: its zone, and whether it has a row in `tenants`.
#[derive(Clone, Copy)]
pub struct Tenant {
    pub zone: u16,
    /// A row in `control_plane.tenants` (or the default tenant): the tenant has counters of its
    /// own in `tenant_stats`. Names callers make up share one.
    pub counted: bool,
}

struct Cache {
    /// The policy generation the zones were read at: a committed change to `tenants` bumps it.
    generation: u64,
    tenants: BoundedMap<(u32, String), Tenant>,
    /// The last tenant asked for, to skip the map on the common path.
    last: Option<(u32, String, Tenant)>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache {
        generation: 0,
        tenants: BoundedMap::new(ZONE_BYTES),
        last: None,
    });
}

/// The number (see `shmem::zones`) of the time zone whose calendar the tenant's quotas follow.
pub fn zone_of(sh: &Shared, db: u32, tenant: &str) -> CpResult<u16> {
    Ok(tenant_of(sh, db, tenant)?.zone)
}

/// The tenant's zone and whether it is counted on its own, from the cache or the catalog.
pub fn tenant_of(sh: &Shared, db: u32, tenant: &str) -> CpResult<Tenant> {
    // Read before the row, bumped after a change commits: a zone read concurrently with a
    // change is read again next time.
    let generation = sh.policy_generation();
    let own_changes = crate::xact::has_policy_changes();
    if !own_changes {
        let hit = CACHE.with_borrow_mut(|c| {
            if c.generation != generation {
                c.tenants.clear();
                c.last = None;
                c.generation = generation;
            }
            if let Some((d, t, z)) = &c.last {
                if *d == db && t == tenant {
                    return Some(*z);
                }
            }
            let z = *c.tenants.get(&(db, tenant.to_string()))?;
            c.last = Some((db, tenant.to_string(), z));
            Some(z)
        });
        if let Some(z) = hit {
            return Ok(z);
        }
    }
    let row = catalog::tenant_zone(tenant)?;
    let t = Tenant {
        counted: row.is_some() || tenant == crate::gucs::DEFAULT_TENANT,
        zone: match row {
            None => UTC,
            Some(name) => sh.zone_id(&named(&name)?)?,
        },
    };
    // A change this transaction has not committed is not for others (nor for after a rollback).
    if !own_changes {
        CACHE.with_borrow_mut(|c| {
            c.tenants.insert((db, tenant.to_string()), t, tenant.len());
            c.last = Some((db, tenant.to_string(), t));
        });
    }
    Ok(t)
}

thread_local! {
    /// The zone last looked up by name (compaction asks for the same one row after row).
    static LAST: RefCell<Option<Zone>> = const { RefCell::new(None) };
}

fn named(zone: &str) -> CpResult<Zone> {
    if let Some(z) = LAST.with_borrow(|l| l.as_ref().filter(|z| z.name() == zone).cloned()) {
        return Ok(z);
    }
    let z = Zone::named(zone).ok_or_else(|| {
        CpError::invalid_with(
            format!("time zone \"{zone}\" is not in the tz database"),
            "control_plane takes time zones from the IANA tz database it was built with.",
            Some("Use a name such as 'UTC', 'Europe/Paris' or 'America/New_York'."),
        )
    })?;
    LAST.set(Some(z.clone()));
    Ok(z)
}

/// Check constraint of `tenants.time_zone`: true for a zone of the tz database, an error (22023)
/// otherwise.
#[pg_extern(immutable, parallel_safe)]
fn _check_time_zone(zone: Option<&str>) -> Result<bool, ErrorReport> {
    match zone {
        None => Ok(true),
        Some(z) => {
            named(z)?;
            Ok(true)
        }
    }
}

fn unix_us(t: TimestampWithTimeZone) -> Option<i64> {
    let pg: i64 = t.into();
    (pg != i64::MAX && pg != i64::MIN).then(|| pg.saturating_add(PG_EPOCH_OFFSET_US))
}

fn timestamptz(unix_us: i64) -> CpResult<TimestampWithTimeZone> {
    catalog::timestamptz(unix_us)
        .ok_or_else(|| CpError::invalid("the day is out of the range of timestamp with time zone"))
}

/// The start of the day of `zone` that contains `at` (infinity stays infinity). Compaction groups
/// a tenant's rows by these days.
#[pg_extern(stable, parallel_safe)]
fn _local_day_start(zone: &str, at: TimestampWithTimeZone) -> Result<TimestampWithTimeZone, ErrorReport> {
    let Some(us) = unix_us(at) else { return Ok(at) };
    Ok(timestamptz(named(zone)?.span(Window::Day, us).start)?)
}

/// The end (the next day's start) of the day of `zone` that contains `at`.
#[pg_extern(stable, parallel_safe)]
fn _local_day_end(zone: &str, at: TimestampWithTimeZone) -> Result<TimestampWithTimeZone, ErrorReport> {
    let Some(us) = unix_us(at) else { return Ok(at) };
    Ok(timestamptz(named(zone)?.span(Window::Day, us).end)?)
}
