//! How every statement the extension runs is kept out of reach of the objects its callers create
//! (the CVE-2018-1058 class; DESIGN.md principle 11):
//!
//! - `pinned`: every statement is prepared and executed with the search path pinned to
//!   `pg_catalog` (an override search path on PostgreSQL 15 and 16; `search_path = pg_catalog,
//!   pg_temp` at a GUC nest level from 17 on, as PostgreSQL's own maintenance commands do), so no
//!   operator, function or type of a schema the caller owns, nor of `pg_temp` ahead of
//!   `pg_catalog`, can be resolved;
//! - `as_owner`: what must run with the extension's rights (its bookkeeping tables, which
//!   application roles have no grant on) runs as the extension's owner, never as the bootstrap
//!   superuser, with the security-restricted flag set;
//! - `check_qualified`: every query text names its relations, operators, functions and types
//!   with their schema; checked on the raw parse tree the first time a backend prepares it, so
//!   that every test that runs a statement checks its text.

use crate::error::{CpError, CpResult};
use pgrx::pg_sys;
use std::ffi::{c_void, CStr};

/// The search path of every statement the extension runs (from PostgreSQL 17 on).
#[cfg(not(any(feature = "pg15", feature = "pg16")))]
const SAFE_SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

/// Runs `f` with `search_path` pinned to `pg_catalog, pg_temp`; the caller's path is restored
/// afterwards (on an error, by the (sub)transaction's abort).
///
/// PostgreSQL 15 and 16: an override search path (`pg_catalog` alone: a temporary schema is never
/// searched), pushed and popped without touching the `search_path` setting. Setting it costs a
/// parse of the value, a walk over every setting at the nest level's end (PostgreSQL 15) and a
/// recomputation of the path after each change: about 5 % of a `cp_record_usage` call (perf).
/// The override is what PostgreSQL's own extension scripts ran under before 17, which removed it.
#[cfg(any(feature = "pg15", feature = "pg16"))]
pub fn pinned<R>(f: impl FnOnce() -> CpResult<R>) -> CpResult<R> {
    unsafe {
        // Copied by the push (its schema list is empty: pg_catalog is added in front).
        let mut path = pg_sys::OverrideSearchPath {
            addCatalog: true,
            ..Default::default()
        };
        pg_sys::PushOverrideSearchPath(&mut path);
    }
    let r = f();
    // An error inside `f` unwinds past this: the abort of the (sub)transaction pops the override
    // (`AtEOXact_Namespace`, `AtEOSubXact_Namespace`).
    unsafe { pg_sys::PopOverrideSearchPath() };
    r
}

/// PostgreSQL 17 and later: a GUC nest level (as PostgreSQL's own maintenance commands do), whose
/// search path cache makes the change cheap.
#[cfg(not(any(feature = "pg15", feature = "pg16")))]
pub fn pinned<R>(f: impl FnOnce() -> CpResult<R>) -> CpResult<R> {
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            SAFE_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let r = f();
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    r
}

thread_local! {
    /// The extension's owner, by the extension's oid (a DROP and CREATE gives a new oid).
    static OWNER: std::cell::Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { std::cell::Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
    /// `forget_owner` is registered in this backend.
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Forgets the cached owner on any relcache invalidation: a `DROP EXTENSION` drops the
/// extension's tables, which invalidates them in every backend.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget_owner(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    OWNER.set((pg_sys::InvalidOid, pg_sys::InvalidOid));
}

/// The role that owns the extension (`pg_extension.extowner`), cached per backend until a
/// relcache invalidation (the lookup is a catalog scan; the recording path asks on every call).
fn extension_owner() -> CpResult<pg_sys::Oid> {
    let (cached_ext, cached_owner) = OWNER.get();
    if cached_ext != pg_sys::InvalidOid {
        return Ok(cached_owner);
    }
    if !CALLBACK.get() {
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget_owner), pg_sys::Datum::from(0usize)) };
        CALLBACK.set(true);
    }
    let ext = unsafe { pg_sys::get_extension_oid(c"control_plane".as_ptr(), true) };
    if ext == pg_sys::InvalidOid {
        return Err(CpError::state(
            "extension \"control_plane\" is not installed in this database",
            None,
            Some("CREATE EXTENSION control_plane;"),
        ));
    }
    let owner = super::query_latest(
        c"SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.oid OPERATOR(pg_catalog.=) $1",
        &[super::Arg::Raw(pg_sys::OIDOID, Some(pg_sys::Datum::from(ext)))],
        |r| r.i64_opt(1).map(|o| pg_sys::Oid::from(o as u32)),
    )?
    .into_iter()
    .next()
    .flatten()
    .ok_or_else(|| CpError::Internal("the extension has no owner".into()))?;
    OWNER.set((ext, owner));
    Ok(owner)
}

/// Runs `f` as the extension's owner, in a security-restricted operation (no temporary objects,
/// no role change inside), for the extension's own bookkeeping tables that application roles
/// have no grant on. Every statement inside is `pinned` (see `run_plan`). (An error leaves the
/// user to the (sub)transaction's abort, which restores it.)
pub fn as_owner<R>(f: impl FnOnce() -> CpResult<R>) -> CpResult<R> {
    let owner = extension_owner()?;
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0i32);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            owner,
            sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
        );
    }
    let r = {
        let _inside = OwnerDepth::enter();
        f()
    };
    unsafe { pg_sys::SetUserIdAndSecContext(user, sec) };
    r
}

thread_local! {
    /// How many `as_owner` calls are running (nested) in this backend.
    static OWNER_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One level of `as_owner`, left on return and on an error's unwinding alike.
struct OwnerDepth;

impl OwnerDepth {
    fn enter() -> OwnerDepth {
        OWNER_DEPTH.set(OWNER_DEPTH.get() + 1);
        OwnerDepth
    }
}

impl Drop for OwnerDepth {
    fn drop(&mut self) {
        OWNER_DEPTH.set(OWNER_DEPTH.get().saturating_sub(1));
    }
}

/// True while the extension itself writes (inside `as_owner`): the ledger's row trigger tells
/// the extension's rows from those a role inserted directly.
pub fn by_extension() -> bool {
    OWNER_DEPTH.get() > 0
}

/// What the walker over a raw parse tree collects.
#[derive(Default)]
struct Names {
    /// Unqualified names that a caller's objects could shadow.
    unqualified: Vec<String>,
    /// Unqualified relation names (allowed when they name a CTE of the statement).
    relations: Vec<String>,
    ctes: Vec<String>,
}

unsafe fn list_len(l: *mut pg_sys::List) -> i32 {
    if l.is_null() {
        0
    } else {
        unsafe { (*l).length }
    }
}

/// The last element of a name list (a `String` node), for messages.
unsafe fn last_name(l: *mut pg_sys::List) -> String {
    unsafe {
        let n = list_len(l);
        if n == 0 {
            return String::new();
        }
        let cell = (*l).elements.add(n as usize - 1);
        let node = (*cell).ptr_value as *mut pg_sys::Node;
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_String {
            return "?".into();
        }
        let s = (*(node as *mut pg_sys::String)).sval;
        if s.is_null() {
            "?".into()
        } else {
            CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    }
}

unsafe fn c_text(s: *const std::ffi::c_char) -> String {
    if s.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }
}

/// Records `what` named by `list` unless the list names its schema too.
unsafe fn flag_unqualified(names: &mut Names, what: &str, list: *mut pg_sys::List) {
    unsafe {
        if list_len(list) < 2 {
            names.unqualified.push(format!("{what} {}", last_name(list)));
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    use pg_sys::NodeTag as T;
    if node.is_null() {
        return false;
    }
    unsafe {
        let names = &mut *(ctx as *mut Names);
        match (*node).type_ {
            T::T_A_Expr => flag_unqualified(names, "operator", (*(node as *mut pg_sys::A_Expr)).name),
            T::T_FuncCall => flag_unqualified(names, "function", (*(node as *mut pg_sys::FuncCall)).funcname),
            T::T_TypeName => flag_unqualified(names, "type", (*(node as *mut pg_sys::TypeName)).names),
            T::T_SubLink => {
                let s = node as *mut pg_sys::SubLink;
                if (*s).operName.is_null() && (*s).subLinkType == pg_sys::SubLinkType::ANY_SUBLINK {
                    // x IN (SELECT ...): an `=` looked up by name.
                    names.unqualified.push("operator = (IN subquery)".into());
                } else if !(*s).operName.is_null() {
                    flag_unqualified(names, "operator", (*s).operName);
                }
            }
            T::T_CaseExpr => {
                // CASE x WHEN y compares with an `=` looked up by name.
                if !(*(node as *mut pg_sys::CaseExpr)).arg.is_null() {
                    names.unqualified.push("operator = (CASE x WHEN)".into());
                }
            }
            T::T_SortBy => {
                let s = node as *mut pg_sys::SortBy;
                if !(*s).useOp.is_null() {
                    flag_unqualified(names, "operator", (*s).useOp);
                }
            }
            T::T_RangeVar => {
                let r = node as *mut pg_sys::RangeVar;
                if (*r).schemaname.is_null() {
                    names.relations.push(c_text((*r).relname));
                }
            }
            T::T_CommonTableExpr => {
                names
                    .ctes
                    .push(c_text((*(node as *mut pg_sys::CommonTableExpr)).ctename));
            }
            _ => {}
        }
        raw_walk(node, ctx)
    }
}

unsafe fn raw_walk(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    unsafe {
        #[cfg(feature = "pg15")]
        return pg_sys::raw_expression_tree_walker(node, Some(walk), ctx);
        #[cfg(not(feature = "pg15"))]
        return pg_sys::raw_expression_tree_walker_impl(node, Some(walk), ctx);
    }
}

/// The names of a query text that a caller's objects could shadow: operators, functions and
/// types without their schema (including the `=` of `IN`, `IS DISTINCT FROM`, `NULLIF`,
/// `BETWEEN` and `CASE x WHEN`, which cannot be qualified and must be written out), and
/// relations without their schema that are not CTEs of the statement.
pub fn unqualified_names(sql: &CStr) -> Vec<String> {
    let mut names = Names::default();
    unsafe {
        let stmts = pg_sys::raw_parser(sql.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        for i in 0..list_len(stmts) {
            let raw = (*(*stmts).elements.add(i as usize)).ptr_value as *mut pg_sys::RawStmt;
            let stmt = (*raw).stmt;
            // The statement node itself is not passed to the callback by the walker.
            walk(stmt, &mut names as *mut Names as *mut c_void);
        }
    }
    let Names {
        mut unqualified,
        relations,
        ctes,
    } = names;
    unqualified.extend(
        relations
            .into_iter()
            .filter(|r| !ctes.contains(r))
            .map(|r| format!("relation {r}")),
    );
    unqualified.sort();
    unqualified.dedup();
    unqualified
}

/// XX000 when `sql` names anything a caller could shadow (a bug of the extension, caught by any
/// test that runs the statement; see `unqualified_names`).
pub fn check_qualified(sql: &CStr) -> CpResult<()> {
    let names = unqualified_names(sql);
    if names.is_empty() {
        return Ok(());
    }
    Err(CpError::Internal(format!(
        "query text names without their schema: {}",
        names.join(", ")
    )))
}
