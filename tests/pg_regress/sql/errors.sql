-- Bad input gets a clean error with a real SQLSTATE, message, detail and hint.
\set SHOW_CONTEXT never
SELECT * FROM control_plane.cp_admit(NULL);
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT * FROM control_plane.cp_admit('dave', -1);
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT * FROM control_plane.cp_admit('dave', 9223372036854775807);
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT * FROM control_plane.cp_admit('dave', 10, model => '');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT * FROM control_plane.cp_record_usage('dave', 1, NULL);
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SELECT control_plane.cp_release(NULL);
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('erin', 'platinum');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
INSERT INTO control_plane.subjects (subject_id, profile, overrides) VALUES ('erin', 'free', '{"request_per_day": 5}');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
INSERT INTO control_plane.subjects (subject_id, profile, overrides) VALUES ('erin', 'free', '{"requests_per_day": "5"}');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
\set VERBOSITY terse
UPDATE control_plane.profiles SET requests_per_day = -1 WHERE name = 'pro';
\set VERBOSITY default
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
SET control_plane.tenant = '';
SELECT * FROM control_plane.cp_admit('dave');
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
RESET control_plane.tenant;
SET control_plane.tenat = 'x';
SELECT :'LAST_ERROR_SQLSTATE' AS sqlstate;
-- nothing above created a subject
SELECT count(*) AS subjects FROM control_plane.subjects WHERE subject_id IN ('dave', 'erin');
