\set s random(1, :subjects)
SELECT * FROM control_plane.cp_admit('r_' || :s, 100);
