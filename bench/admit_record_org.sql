-- The admit -> record cycle under money budgets for subjects of one organisation with budgets of
-- its own: each admission checks and holds on the subject's entry and the organisation's (two
-- partition locks), each record settles both.
\set s random(1, :subjects)
SELECT reservation_id AS rid FROM control_plane.cp_admit('o_' || :s, 100, max_output_tokens => 50) \gset
SELECT * FROM control_plane.cp_record_usage('o_' || :s, 100, 50, reservation_id => :rid);
