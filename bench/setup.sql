-- A plan whose quotas are checked on every call but never deny during a benchmark.
INSERT INTO control_plane.profiles (name, requests_per_day, requests_per_month, input_tokens_per_day,
                                    input_tokens_per_month, output_tokens_per_day, output_tokens_per_month)
VALUES ('bench', 1e15, 1e15, 1e15, 1e15, 1e15, 1e15);
INSERT INTO control_plane.subjects (subject_id, profile)
SELECT 'bench_' || g, 'bench' FROM generate_series(1, :subjects) g
UNION ALL SELECT 'bench_hot', 'bench';
