-- Every object of the extension in this database, as sorted lines of text: what an install or an
-- update leaves behind. tests/upgrade/run.sh compares an updated database with a fresh install.
WITH ext AS (
    SELECT oid, extconfig, extcondition FROM pg_catalog.pg_extension WHERE extname = 'control_plane'
), ns AS (
    SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'control_plane'
), rels AS (
    SELECT c.oid, c.relname, c.relkind FROM pg_catalog.pg_class c, ns WHERE c.relnamespace = ns.oid
)
SELECT line FROM (
    -- Members of the extension.
    SELECT 'member ' || pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) AS line
      FROM pg_catalog.pg_depend d, ext
     WHERE d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION ALL
    -- The schema and its privileges.
    SELECT 'schema control_plane acl=' || coalesce(n.nspacl::text, '-')
      FROM pg_catalog.pg_namespace n, ns WHERE n.oid = ns.oid
    UNION ALL
    -- Functions: signature, result, properties, body or symbol, privileges, comment.
    SELECT format('function %s(%s) returns %s lang=%s volatile=%s parallel=%s strict=%s secdef=%s leakproof=%s '
                  'config=%s cost=%s rows=%s src=%s bin=%s acl=%s comment=%s',
                  p.proname, pg_catalog.pg_get_function_arguments(p.oid), pg_catalog.pg_get_function_result(p.oid),
                  l.lanname, p.provolatile, p.proparallel, p.proisstrict, p.prosecdef, p.proleakproof,
                  coalesce(p.proconfig::text, '-'), p.procost, p.prorows, p.prosrc, coalesce(p.probin, '-'),
                  coalesce(p.proacl::text, '-'), coalesce(pg_catalog.obj_description(p.oid, 'pg_proc'), '-'))
      FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang, ns
     WHERE p.pronamespace = ns.oid
    UNION ALL
    -- Relations: kind, persistence, row security, privileges, comment.
    SELECT format('relation %s kind=%s persistence=%s rls=%s force_rls=%s acl=%s comment=%s',
                  c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
                  coalesce(c.relacl::text, '-'), coalesce(pg_catalog.obj_description(c.oid, 'pg_class'), '-'))
      FROM pg_catalog.pg_class c JOIN rels r ON r.oid = c.oid
     WHERE c.relkind <> 'c'
    UNION ALL
    -- Columns of tables, views and composite types, in order (position among the live ones).
    SELECT format('column %s.%s #%s %s notnull=%s identity=%s generated=%s default=%s collation=%s comment=%s',
                  r.relname, a.attname,
                  pg_catalog.rank() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                  pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity, a.attgenerated,
                  coalesce(pg_catalog.pg_get_expr(ad.adbin, ad.adrelid), '-'),
                  coalesce((SELECT collname FROM pg_catalog.pg_collation WHERE oid = a.attcollation), '-'),
                  coalesce(pg_catalog.col_description(a.attrelid, a.attnum), '-'))
      FROM pg_catalog.pg_attribute a
      JOIN rels r ON r.oid = a.attrelid
      LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
     WHERE a.attnum > 0 AND NOT a.attisdropped AND r.relkind IN ('r', 'v', 'c', 'p')
    UNION ALL
    -- Constraints.
    SELECT format('constraint %s on %s: %s', co.conname,
                  coalesce(r.relname, pg_catalog.format_type(co.contypid, NULL)),
                  pg_catalog.pg_get_constraintdef(co.oid))
      FROM pg_catalog.pg_constraint co LEFT JOIN rels r ON r.oid = co.conrelid, ns
     WHERE co.connamespace = ns.oid
    UNION ALL
    -- Indexes.
    SELECT 'index ' || pg_catalog.pg_get_indexdef(i.indexrelid)
      FROM pg_catalog.pg_index i JOIN rels r ON r.oid = i.indrelid
    UNION ALL
    -- Triggers.
    SELECT format('trigger %s enabled=%s', pg_catalog.pg_get_triggerdef(t.oid), t.tgenabled)
      FROM pg_catalog.pg_trigger t JOIN rels r ON r.oid = t.tgrelid
     WHERE NOT t.tgisinternal
    UNION ALL
    -- Row-level security policies.
    SELECT format('policy %s on %s cmd=%s permissive=%s roles=%s using=%s check=%s', po.polname, r.relname,
                  po.polcmd, po.polpermissive, po.polroles::text,
                  coalesce(pg_catalog.pg_get_expr(po.polqual, po.polrelid), '-'),
                  coalesce(pg_catalog.pg_get_expr(po.polwithcheck, po.polrelid), '-'))
      FROM pg_catalog.pg_policy po JOIN rels r ON r.oid = po.polrelid
    UNION ALL
    -- Views.
    SELECT format('view %s: %s', r.relname, pg_catalog.pg_get_viewdef(r.oid))
      FROM rels r WHERE r.relkind IN ('v', 'm')
    UNION ALL
    -- Sequences (identity columns).
    SELECT format('sequence %s type=%s start=%s increment=%s min=%s max=%s cache=%s cycle=%s', r.relname,
                  pg_catalog.format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                  s.seqcache, s.seqcycle)
      FROM pg_catalog.pg_sequence s JOIN rels r ON r.oid = s.seqrelid
    UNION ALL
    -- Types: kind, privileges, comment (composite attributes are listed as columns above).
    SELECT format('type %s kind=%s acl=%s comment=%s', t.typname, t.typtype, coalesce(t.typacl::text, '-'),
                  coalesce(pg_catalog.obj_description(t.oid, 'pg_type'), '-'))
      FROM pg_catalog.pg_type t, ns
     WHERE t.typnamespace = ns.oid AND t.typtype IN ('c', 'e', 'd') AND t.typname NOT LIKE '\_%'
       AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_catalog.pg_class WHERE oid = t.typrelid) = 'c')
    UNION ALL
    -- Tables whose rows pg_dump keeps (pg_extension_config_dump).
    SELECT format('config_dump %s where=%s', cfg.rel::pg_catalog.regclass, cfg.cond)
      FROM ext, LATERAL unnest(ext.extconfig, ext.extcondition) AS cfg(rel, cond)
) lines
ORDER BY line;
