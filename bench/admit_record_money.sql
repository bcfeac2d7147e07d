-- The admit -> record cycle under money budgets: each admission reserves the cost estimate of 100
-- input and 50 output tokens of a priced model, each record settles it to the actual cost.
\set s random(1, :subjects)
SELECT reservation_id AS rid FROM control_plane.cp_admit('b_' || :s, 100, max_output_tokens => 50) \gset
SELECT * FROM control_plane.cp_record_usage('b_' || :s, 100, 50, reservation_id => :rid);
