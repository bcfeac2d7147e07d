-- Bad input gets a clean error with a real SQLSTATE, message, detail and hint.
\set VERBOSITY verbose
\set SHOW_CONTEXT never
SELECT * FROM control_plane.cp_admit(NULL);
SELECT * FROM control_plane.cp_admit('dave', -1);
SELECT * FROM control_plane.cp_admit('dave', 9223372036854775807);
SELECT * FROM control_plane.cp_record_usage('dave', 1, NULL);
INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('erin', 'platinum');
INSERT INTO control_plane.subjects (subject_id, profile, overrides) VALUES ('erin', 'free', '{"request_per_day": 5}');
INSERT INTO control_plane.subjects (subject_id, profile, overrides) VALUES ('erin', 'free', '{"requests_per_day": "5"}');
UPDATE control_plane.profiles SET requests_per_day = -1 WHERE name = 'pro';
SET control_plane.tenant = '';
SELECT * FROM control_plane.cp_admit('dave');
RESET control_plane.tenant;
SET control_plane.tenat = 'x';
