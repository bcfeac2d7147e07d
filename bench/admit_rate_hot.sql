SELECT * FROM control_plane.cp_admit('r_hot', 100);
