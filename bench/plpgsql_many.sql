\set s random(1, :subjects)
SELECT bench_take('k_' || :s, 1e9, 1e9);
