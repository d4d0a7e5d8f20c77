"""Benchmarks: what autotune saves (speed) and what its presets gain (quality), each measured against a
baseline run in the same process, on the same machine, at the same moment.

One module a benchmark; each `bench_*` function returns a small dataclass of figures whose `markdown()` is a
table; `autotune bench` (autotune/cli/bench.py) prints it and rewrites that benchmark's section of BENCHMARKS.md
(`markdown.write_section`).

1. `bench_throughput`: the tuner's loop against two loops a user would write (the naive loop: a fresh inversion for
   every edit; the strong naive loop: one `edit` per trial and task with the cache on), on the tuner's trial
   parameters, at the same thread count, in scored edits per minute; and the gain split into its factors (the tuner
   with batching, caching, pruning or the cost-aware sampler switched off). Every run kept, medians with ranges.
2. `bench_overhead`: one candidate edit against the UNet forward passes it cannot avoid: the same calls (shapes,
   timesteps, batch sizes, recorded by a forward hook during the edit) replayed alone, SDPA attention throughout.
3. `bench_efficiency`: per category, a dense w_src x w_tgt grid is edited and scored once; TPE, GP and random
   search then query that table (nearest grid point) and we count the trials each needs to reach 98% of the
   grid's best scalarised score; on the task set the sampler settings were chosen on and on a fresh one.
4. `bench_quality`: on a fresh held-out set, every named pick of the tuned presets against SimInversion's (0.5, 7.5)
   and DDIM, with paired bootstrap 95% intervals on the differences.
5. `bench_inversion`: reconstruction PSNR against w_inv (`autotune.bench.shapes_model.inversion_table`).
6. `bench_memory`: peak memory of a tuning run (RSS of a child process on the CPU, `max_memory_allocated` on CUDA).
7. `bench_gpu`: full-size architectures built from their published configs (`configs/`) with random weights:
   throughput, overhead and peak memory at native size on a GPU (a tiny version on the CPU).
"""
