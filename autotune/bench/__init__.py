"""Benchmarks: what autotune saves (speed) and what its presets gain (quality), each measured against a
baseline run in the same process, on the same machine, at the same moment.

One module a benchmark; each `bench_*` function returns a small dataclass of figures whose `markdown()` is a
table; `autotune bench` (autotune/cli/bench.py) prints it and rewrites that benchmark's section of BENCHMARKS.md
(`markdown.write_section`).

1. `bench_throughput`: the tuner's loop (`tune`: batched `edit_task`, cached inversions and source branches,
   pruning) against the loop a user would write (each trial edits each task alone, cache cleared: a fresh
   inversion every time, no batching, no pruning), on the trial parameters the tuner asked, run between the
   tuner's batches so that both loops meet the same machine: trials per minute and the ratio.
2. `bench_overhead`: one candidate edit against the UNet forward passes it cannot avoid: the same calls (shapes,
   timesteps, batch sizes, recorded by a forward hook during the edit) replayed alone, SDPA attention throughout.
3. `bench_efficiency`: per category, a dense w_src x w_tgt grid is edited and scored once; TPE, GP and random
   search then query that table (nearest grid point) and we count the trials each needs to reach 98% of the
   grid's best scalarised score.
4. `bench_quality`: on each category's held-out split, the tuned preset against SimInversion's (0.5, 7.5) and
   DDIM-style (1, 7.5): edit success and fidelity.
5. `bench_inversion`: reconstruction PSNR against w_inv (`autotune.bench.shapes_model.inversion_table`).
6. `bench_memory`: peak memory of a tuning run (RSS of a child process on the CPU, `max_memory_allocated` on CUDA).
"""
