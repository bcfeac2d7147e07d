\set s random(1, :subjects)
SELECT * FROM control_plane.cp_admit('a_' || :s, 100);
