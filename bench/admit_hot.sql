SELECT * FROM control_plane.cp_admit('bench_hot', 100);
