//! Tenants' time zones as small numbers that subject entries and reservations carry, so that any
//! process (a backend settling at commit, the flusher expiring a reservation) computes a
//! subject's day and month in its tenant's zone without reading a table.
//!
//! Zone 0 is UTC. Any other zone gets a number the first time a backend meets a tenant that uses
//! it, and keeps it until the server stops: the registry only grows (at most `MAX_ZONES` names, a
//! few more than the tz database has). Each process keeps a `Clock` per zone it has met, which
//! answers for nearby instants without looking at the tz rules.

use super::Shared;
use crate::calendar::{self, Now, Window};
use crate::error::{CpError, CpResult};
use crate::zone::{Clock, Span, Zone};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};

/// Zones (over all databases) a server can tell apart; the tz database has about 600 names.
pub const MAX_ZONES: usize = 1024;
/// Longest zone name kept (the longest in the tz database has 32 bytes).
const NAME_BYTES: usize = 63;

/// The UTC zone's number.
pub const UTC: u16 = 0;

#[repr(C)]
pub struct ZoneNames {
    /// Names published (entry 0, UTC, has none). Entries below it never change.
    count: AtomicU32,
    /// Held (1) by a backend appending a name.
    writer: AtomicU32,
    names: [[u8; NAME_BYTES + 1]; MAX_ZONES],
}

pub const fn region_bytes() -> usize {
    std::mem::size_of::<ZoneNames>()
}

thread_local! {
    /// This process's clocks, by zone number (None: not met yet).
    static CLOCKS: RefCell<Vec<Option<Clock>>> = const { RefCell::new(Vec::new()) };
}

fn name_of(entry: &[u8; NAME_BYTES + 1]) -> &str {
    let len = entry[NAME_BYTES] as usize;
    std::str::from_utf8(&entry[..len.min(NAME_BYTES)]).unwrap_or("UTC")
}

impl Shared {
    fn zone_names(&self) -> &ZoneNames {
        unsafe { &*self.zones }
    }

    /// The number of `zone`, registering it on first use.
    pub fn zone_id(&self, zone: &Zone) -> CpResult<u16> {
        if zone.is_utc() {
            return Ok(UTC);
        }
        let canonical = zone.name().to_string();
        let z = self.zone_names();
        let find = |upto: u32| (1..upto as usize).find(|&i| name_of(&z.names[i]) == canonical);
        if let Some(i) = find(z.count.load(Ordering::Acquire)) {
            return Ok(i as u16);
        }
        if canonical.len() > NAME_BYTES {
            return Err(CpError::invalid(format!("time zone name \"{canonical}\" is too long")));
        }
        while z
            .writer
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let count = z.count.load(Ordering::Acquire).max(1);
        let result = match find(count) {
            Some(i) => Ok(i as u16),
            None if count as usize >= MAX_ZONES => Err(CpError::LimitExceeded(format!(
                "the server has registered {MAX_ZONES} time zones, the most it can tell apart"
            ))),
            None => {
                let entry = unsafe { &mut (*self.zones).names[count as usize] };
                entry[..canonical.len()].copy_from_slice(canonical.as_bytes());
                entry[NAME_BYTES] = canonical.len() as u8;
                z.count.store(count + 1, Ordering::Release);
                Ok(count as u16)
            }
        };
        z.writer.store(0, Ordering::Release);
        if let Ok(id) = result {
            // This backend will use it next: give it its clock now, outside any lock.
            self.with_clock(id, |_| ());
        }
        result
    }

    /// The name of zone `id` (`UTC` for 0 and for numbers not registered).
    pub fn zone_name(&self, id: u16) -> String {
        let z = self.zone_names();
        if id == UTC || id as u32 >= z.count.load(Ordering::Acquire) {
            return "UTC".into();
        }
        name_of(&z.names[id as usize]).to_string()
    }

    /// Runs `f` on this process's clock of zone `id` (made from the registry on first use).
    /// Never fails: a number this server never gave out counts as UTC.
    fn with_clock<R>(&self, id: u16, f: impl FnOnce(&mut Clock) -> R) -> R {
        CLOCKS.with_borrow_mut(|clocks| {
            let i = id as usize;
            if clocks.len() <= i {
                clocks.resize(i + 1, None);
            }
            let clock =
                clocks[i].get_or_insert_with(|| Clock::new(Zone::named(&self.zone_name(id)).unwrap_or_else(Zone::utc)));
            f(clock)
        })
    }

    /// The indices of the day and month of zone `id` that contain `unix_us`.
    pub fn windows_at(&self, id: u16, unix_us: i64) -> (i64, i64) {
        if id == UTC {
            return (Window::Day.index(unix_us), Window::Month.index(unix_us));
        }
        self.with_clock(id, |c| c.indices(unix_us))
    }

    /// The window of kind `w` of zone `id` that contains `unix_us`.
    pub fn span_at(&self, id: u16, w: Window, unix_us: i64) -> Span {
        if id == UTC {
            let (start, end) = w.bounds(unix_us);
            return Span {
                index: w.index(unix_us),
                start,
                end,
            };
        }
        self.with_clock(id, |c| c.span(w, unix_us))
    }

    /// `unix_us` with the ends of its day and month in zone `id`.
    pub fn now_in(&self, id: u16, unix_us: i64) -> Now {
        if id == UTC {
            return calendar::Now::utc(unix_us);
        }
        self.with_clock(id, |c| {
            Now::with_ends(
                unix_us,
                c.span(Window::Day, unix_us).end,
                c.span(Window::Month, unix_us).end,
            )
        })
    }
}
