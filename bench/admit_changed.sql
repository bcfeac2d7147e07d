\set s random(1, 10000)
SELECT * FROM control_plane.cp_admit('c_' || :s, 100);
