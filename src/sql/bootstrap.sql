-- control_plane refuses a schema "control_plane" that another role created before it: its owner
-- could rename it or plant objects in it (CREATE EXTENSION puts the extension into an existing
-- schema of its name). Runs first in the install script, after CREATE EXTENSION chose the schema.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n
                WHERE n.nspname OPERATOR(pg_catalog.=) 'control_plane'
                  AND n.nspowner OPERATOR(pg_catalog.<>) (SELECT r.oid FROM pg_catalog.pg_roles r
                                                          WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER)) THEN
        RAISE EXCEPTION 'schema "control_plane" already exists and is owned by role "%"',
                (SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n
                  WHERE n.nspname OPERATOR(pg_catalog.=) 'control_plane')
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'control_plane installs only into a schema that it creates, or that the role running CREATE EXTENSION owns.',
                  HINT = 'Drop or rename that schema (after checking what is in it), then run CREATE EXTENSION control_plane again.';
    END IF;
END $$;

-- Names (tenants, subjects, models, ...) are UTF-8 throughout: a database of another encoding is
-- refused rather than failing on the first non-ASCII name.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8' THEN
        RAISE EXCEPTION 'control_plane needs a UTF8 database; this one is %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'CREATE DATABASE ... ENCODING ''UTF8'' TEMPLATE template0, and install control_plane there.';
    END IF;
END $$;
