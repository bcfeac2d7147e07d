\set s random(1, :subjects)
SELECT reservation_id AS rid FROM bench_noop_admit('a_' || :s, 100) \gset
INSERT INTO bench_ledger (tenant_id, subject_id, input_tokens, output_tokens, reservation_id, created_at)
VALUES ('default', 'a_' || :s, 100, 50, :rid, now());
