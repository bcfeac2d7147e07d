\set s random(1, :subjects)
SELECT * FROM control_plane.cp_record_usage('a_' || :s, 100, 50);
