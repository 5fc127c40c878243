"""`zsteer bench`: throughput, latency, stages, memory and roofline of zsteer's own editors and job.

config.py      BenchConfig, BenchCell (one point of the matrix), RunControl (warm-up, windows)
timing.py      the timing core: measure(), clocks (CUDA events on CUDA), percentiles, stability
stages.py      time per stage by instrumenting an editor for a pass apart from the windows
roofline.py    FLOPs per latent (FlopCounterMode) and the measured matmul peak
run.py         run_bench(config) -> report (a dict)
report.py      JSON, CSV, Markdown, terminal table; baseline regressions; compare
"""
