//! In-database tests (`cargo pgrx test`). Each runs in a transaction that is rolled back, so
//! usage recorded here never commits; shared memory is not rolled back, so every test uses its
//! own subjects.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn presets_exist() {
        let n = Spi::get_one::<i64>("SELECT count(*) FROM control_plane.profiles WHERE tenant_id = '*'").unwrap();
        assert_eq!(n, Some(6));
    }
}
