\set s random(1, :subjects)
INSERT INTO bench_ledger (tenant_id, subject_id, input_tokens, output_tokens, created_at)
VALUES ('default', 'a_' || :s, 100, 50, now());
