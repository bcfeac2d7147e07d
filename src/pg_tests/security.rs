//! The check over the extension's query texts (`catalog::guard`): what it flags and what it
//! accepts. That every text the extension runs passes it is checked by every test that runs the
//! text (the check runs at its first preparation in each backend).

#[pgrx::pg_schema]
mod tests {
    use crate::catalog::unqualified_names;
    use pgrx::prelude::*;

    fn flagged(sql: &std::ffi::CStr) -> Vec<String> {
        unqualified_names(sql)
    }

    #[pg_test]
    fn unqualified_operators_functions_types_and_relations_are_flagged() {
        assert_eq!(
            flagged(c"SELECT count(*) FROM control_plane.subjects s WHERE s.tenant_id = $1"),
            ["function count", "operator ="]
        );
        assert_eq!(flagged(c"SELECT $1::text, $2::pg_catalog.text"), ["type text"]);
        assert_eq!(flagged(c"SELECT $1::timestamptz[]"), ["type timestamptz"]);
        // The `=` behind IN, IS DISTINCT FROM, NULLIF, BETWEEN, CASE x WHEN and x IN (SELECT):
        // looked up by name, so written out instead.
        assert_eq!(flagged(c"SELECT 1 WHERE 'a' IN ('a', 'b')"), ["operator ="]);
        assert_eq!(flagged(c"SELECT 1 WHERE 1 IS DISTINCT FROM 2"), ["operator ="]);
        assert_eq!(flagged(c"SELECT nullif(1, 2)"), ["operator ="]);
        assert_eq!(flagged(c"SELECT 1 WHERE 2 BETWEEN 1 AND 3"), ["operator BETWEEN"]);
        assert_eq!(
            flagged(c"SELECT CASE 1 WHEN 1 THEN 2 END"),
            ["operator = (CASE x WHEN)"]
        );
        assert_eq!(
            flagged(c"SELECT 1 WHERE 1 IN (SELECT 1 FROM pg_catalog.pg_class)"),
            ["operator = (IN subquery)"]
        );
        assert_eq!(flagged(c"SELECT -$1, $2 ->> 'k'"), ["operator -", "operator ->>"]);
        assert_eq!(flagged(c"SELECT 1 FROM usage_events"), ["relation usage_events"]);
        assert_eq!(
            flagged(c"INSERT INTO subjects (x) VALUES (1) ON CONFLICT (x) WHERE x = 1 DO NOTHING"),
            ["operator =", "relation subjects"]
        );
        assert_eq!(flagged(c"SELECT 1 ORDER BY 1 USING <"), ["operator <"]);
    }

    #[pg_test]
    fn qualified_texts_and_ctes_pass() {
        let ok: &[&std::ffi::CStr] = &[
            c"WITH rows AS (SELECT e.id FROM control_plane.usage_events e
                             WHERE e.tenant_id OPERATOR(pg_catalog.=) $1)
              SELECT pg_catalog.count(*), $2::pg_catalog.text, $3::bigint, $4::numeric,
                     interval '1 second', coalesce($5, 0), greatest(1, 2), least(1, 2),
                     extract(epoch FROM pg_catalog.now()), CASE WHEN true THEN 1 END
                FROM rows GROUP BY 2 ORDER BY 1",
            c"INSERT INTO control_plane.usage_buckets AS k (tenant_id) SELECT $1
              ON CONFLICT (tenant_id) DO UPDATE SET requests = k.requests OPERATOR(pg_catalog.+) 1
              RETURNING 1",
            c"SELECT 1 WHERE $1 OPERATOR(pg_catalog.=) ANY ($2) AND EXISTS (SELECT 1 FROM pg_catalog.pg_class)",
        ];
        for sql in ok {
            assert_eq!(flagged(sql), Vec::<String>::new(), "{sql:?}");
        }
    }

    /// Every SQL or PL/pgSQL function of the extension runs with the pinned search path, and the
    /// only SECURITY DEFINER ones are the named read helpers and trigger functions.
    #[pg_test]
    fn every_sql_function_pins_its_search_path() {
        let unpinned = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              WHERE p.pronamespace = 'control_plane'::regnamespace AND l.lanname IN ('sql', 'plpgsql')
                AND NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(unpinned, 0);
        let definers = Spi::get_one::<String>(
            "SELECT string_agg(p.proname, ',' ORDER BY p.proname) FROM pg_proc p
              WHERE p.pronamespace = 'control_plane'::regnamespace AND p.prosecdef",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            definers,
            "_model_prices,_organization,_policy_changed_trigger,_profiles_changed,_subjects_changed,_subjects_profile_exists,_tenant_time_zone"
        );
    }

    /// Attached (by a superuser) to a table outside the schema, the SECURITY DEFINER trigger
    /// functions and the ledger's C trigger refuse to run.
    #[pg_test]
    fn trigger_functions_refuse_tables_outside_the_schema() {
        crate::pg_tests::tests::run(
            "CREATE TEMP TABLE pgt_other (tenant_id text, subject_id text, profile text, kind text,
                                         requests bigint, input_tokens bigint, output_tokens bigint)",
        );
        for (i, f) in [
            "_subjects_profile_exists",
            "_subjects_changed",
            "_usage_events_row_check",
        ]
        .iter()
        .enumerate()
        {
            crate::pg_tests::tests::run(&format!(
                "CREATE TRIGGER pgt_t{i} BEFORE INSERT ON pgt_other FOR EACH ROW EXECUTE FUNCTION control_plane.{f}()"
            ));
            let got = crate::pg_tests::tests::sqlstate(
                "INSERT INTO pgt_other VALUES ('default', 's', 'free', 'usage', 1, 0, 0)",
            );
            assert_eq!(got, "42501", "{f}");
            crate::pg_tests::tests::run(&format!("DROP TRIGGER pgt_t{i} ON pgt_other"));
        }
    }

    /// No internal helper nor cp_cleanup is executable by PUBLIC.
    #[pg_test]
    fn internal_helpers_are_not_public() {
        for f in [
            "control_plane._policy_changed()",
            "control_plane._subject_changed(text, text)",
            "control_plane._profile_changed(integer)",
            "control_plane.cp_cleanup()",
            "control_plane._tenant_time_zone(text)",
            "control_plane._model_prices(text, text)",
            "control_plane._organization(text, text)",
        ] {
            let public = Spi::get_one::<bool>(&format!(
                "SELECT EXISTS (SELECT 1 FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                  WHERE p.oid = '{f}'::regprocedure AND a.grantee = 0 AND a.privilege_type = 'EXECUTE')"
            ))
            .unwrap()
            .unwrap();
            assert!(!public, "{f} is executable by PUBLIC");
        }
        // No trigger function of the schema either: a role could attach it to a table of its own
        // (and a SECURITY DEFINER one would run there as the extension's owner).
        let public_triggers = Spi::get_one::<String>(
            "SELECT coalesce(string_agg(p.proname, ', '), '') FROM pg_proc p,
                    aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
              WHERE p.pronamespace = 'control_plane'::regnamespace AND p.prorettype = 'trigger'::regtype
                AND a.grantee = 0 AND a.privilege_type = 'EXECUTE'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(public_triggers, "", "trigger functions executable by PUBLIC");
        let triggers = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc WHERE pronamespace = 'control_plane'::regnamespace AND prorettype = 'trigger'::regtype",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            triggers, 8,
            "a new trigger function: revoke it from PUBLIC and count it here"
        );
    }
}
