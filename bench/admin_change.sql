\set s random(1, 10000)
\set v random(1, 1000000)
UPDATE control_plane.subjects SET overrides = jsonb_build_object('requests_per_minute', 1000000000000 + :v)
 WHERE tenant_id = 'default' AND subject_id = 'c_' || :s;
