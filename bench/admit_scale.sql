\set s random(1, :subjects)
SELECT * FROM control_plane.cp_admit('m_' || :s, 100);
