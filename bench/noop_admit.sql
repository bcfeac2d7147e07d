\set s random(1, :subjects)
SELECT * FROM bench_noop_admit('a_' || :s, 100);
