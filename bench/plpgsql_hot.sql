SELECT bench_take('k_hot', 1e9, 1e9);
