\set s random(1, :subjects)
SELECT * FROM control_plane.cp_admit('bench_' || :s, 100);
