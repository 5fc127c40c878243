"""The exported ascent step graph in onnxruntime: graph rewrites and CPU chunking side by side in one run.

    python benchmarks/onnx_step.py --generator G.safetensors --classifier C.safetensors \\
        [--batch 128] [--threads 2] [--rounds 16] [--variants kept,no-col2im,...] [--chunk-rows 8,32,0]

Exports the clean step graph once without rewrites, builds one session per variant (the rewrites of
export/transposed_convs.py and export/small_convs.py with other settings; ``none`` = as exported) and runs
each variant at each chunk size in turn, the order reversed every other round, on one batch of random
latents: ``--chunk-rows 0`` is the whole batch in one run on ``--threads`` threads, ``N`` is
export/runtime.RowChunks (1-thread runs of N rows, ``--threads`` at a time), as the backend runs it.
Prints best and median ms per step and each median's speed against the first. docs/NOTES.md (ONNX) quotes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

# Run as a script, this folder comes first on sys.path, and its onnx.py would shadow the onnx package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402 (after the path fix)
import torch  # noqa: E402

from zsteer.export.graphs import AscentStepGraph, build_edit_vjp  # noqa: E402
from zsteer.export.onnx_export import _sample_step_inputs, rewrite_convs, to_onnx  # noqa: E402
from zsteer.export.runtime import Placement, RowChunks, make_session  # noqa: E402
from zsteer.jobs.bench.timing import WallClock  # noqa: E402
from zsteer.pipeline.checkpoints import load_classifier, load_generator  # noqa: E402

# name -> the step graph as exported -> the graph run
VARIANTS = {
    "kept": rewrite_convs,
    "none": lambda m: m,
    "no-col2im": lambda m: rewrite_convs(m, max_gemm_pixels=0),
    "no-small-convs": lambda m: rewrite_convs(m, max_out_pixels=0),
    "no-subpixel": lambda m: rewrite_convs(m, max_out_channels=0),
    "wide-subpixel": lambda m: rewrite_convs(m, max_out_channels=1024),
}


def _feeds(session, rows: int) -> dict[str, np.ndarray]:
    """A batch of random latents and the step's other inputs at plain settings (no row stops)."""
    rng = np.random.default_rng(0)
    scalars = {"lr": 0.1, "penalty": 0.1, "lab_scale": 1.0, "max_shift": np.inf}
    feeds = {}
    for value in session.get_inputs():
        shape = [rows if not isinstance(d, int) else d for d in value.shape]
        if value.name in scalars:
            feeds[value.name] = np.asarray(scalars[value.name], np.float32)
        elif value.type == "tensor(float)":
            fill = {"weights": 1.0, "stop_prob": np.nan}.get(value.name)
            data = rng.standard_normal(shape) if fill is None else np.full(shape, fill)
            feeds[value.name] = data.astype(np.float32)
        else:
            dtype = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}[
                value.type
            ]
            feeds[value.name] = np.full(shape, 10 if value.name == "max_steps" else 0, dtype)
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--variants", default="kept,no-col2im,no-small-convs")
    parser.add_argument("--chunk-rows", default="8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    _, vjp = build_edit_vjp(load_generator(args.generator), load_classifier(args.classifier))
    graph = AscentStepGraph(vjp)
    raw = to_onnx(graph, _sample_step_inputs(graph), graph.input_names, graph.output_names, rewrite=False)
    runs = {}
    for name in args.variants.split(","):
        model = VARIANTS[name](raw).SerializeToString()
        for rows in (int(r) for r in args.chunk_rows.split(",")):
            session = make_session(model, Placement(), threads=1 if rows else args.threads)
            feeds = _feeds(session, args.batch)
            chunks = RowChunks(args.threads if rows else 1, rows or args.batch)
            runs[f"{name} rows={rows or 'all'}"] = lambda s=session, f=feeds, c=chunks: c.run(
                lambda part: s.run(None, part), f, args.batch
            )
    clock, times = WallClock(), {key: [] for key in runs}
    for run in runs.values():
        run()  # warm-up: arena growth, NCHWc weight packing
    for i in range(args.rounds):
        for key in list(runs)[:: 1 if i % 2 == 0 else -1]:
            times[key].append(clock.time(runs[key]))
    first = statistics.median(next(iter(times.values())))
    for key, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{key:32s} best {min(samples) * 1e3:7.1f}  median {median * 1e3:7.1f} ms  speed {first / median:.3f}x"
        )


if __name__ == "__main__":
    main()
