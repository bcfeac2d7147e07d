SELECT * FROM control_plane.cp_admit('a_hot', 100);
