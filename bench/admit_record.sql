\set s random(1, :subjects)
SELECT reservation_id AS rid FROM control_plane.cp_admit('a_' || :s, 100) \gset
SELECT * FROM control_plane.cp_record_usage('a_' || :s, 100, 50, reservation_id => :rid);
