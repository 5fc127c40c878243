"""onnxruntime against PyTorch for exported graphs, at several batch sizes; the report export_models gates on.

Forward graphs: images and logits must agree within ``atol`` (scaled by the output's magnitude where
that exceeds 1, since fp32 rounding is relative). The reference is the torch module that was exported
(BatchNorm folded); the distance to the user's unfolded modules is reported beside it.

Step graphs: two steps (t = 0 from z0, where delta is exactly 0, then t = 1 with starting logits away
from the current ones) through the exported step and through the same torch module. Statuses and moved
flags must be equal. The gradient d score / d z is compared per row, relative to the row's largest entry:
the median row must be within ``step_rtol``, and at most ``outlier_frac`` of the rows (at least one) may
be over it. Why outliers at all: the gradient of a ReLU network is discontinuous where a pre-activation
is 0, and the two runtimes' forwards differ by ~1e-6, so a row with a pre-activation closer to 0 than
that takes the other side of the kink in one runtime; with a course-size model and 128 rows there are a
few such rows at every step. A wrong graph (a padding, a transposition, a mask) fails every row instead.
The relative comparison needs gradients above fp32 resolution: the report gives the largest gradient
norm, so a tiny one (random-init models: about 1e-8 per step) is visible as the cause.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zsteer.pipeline.network import EditNet

from .graphs import AscentStepGraph, EditVJP
from .graphset import OnnxGraphs
from .runtime import Placement, make_session

_TINY = 1e-30


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


def _bound(ref: np.ndarray, atol: float) -> float:
    return atol * max(1.0, float(np.max(np.abs(ref), initial=0.0)))


def step_feeds(vjp: EditVJP, lab: bool, n: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs of a first step for ``n`` rows: targets on the first attributes, the rest preserved."""
    gen = torch.Generator().manual_seed(seed)
    a, d = vjp.n_logits, vjp.z_dim
    z = torch.randn(n, d, generator=gen)
    weights = torch.zeros(n, a)
    weights[:, 0] = 1.0
    if a > 1:
        weights[:, 1] = -0.5
    stop = torch.full((n,), math.nan)
    stop[::2] = 0.99  # half the rows with a stop test, unlikely to pass at random
    feeds = {
        "z": z, "z0": z.clone(), "labels": torch.randint(0, max(vjp.n_labels, 1), (n,), generator=gen),
        "logits0": torch.zeros(n, a), "weights": weights, "preserve": (weights == 0).float(),
        "stop_prob": stop, "status": torch.zeros(n, dtype=torch.int32),
        "max_steps": torch.full((n,), 10, dtype=torch.int32), "steps_taken": torch.zeros(n, dtype=torch.int32),
        "accum": torch.zeros(n, d), "t": torch.tensor(0, dtype=torch.int32), "lr": torch.tensor(0.1),
        "penalty": torch.tensor(0.1), "max_shift": torch.tensor(math.inf), "normalize": torch.tensor(False),
        "lab_scale": torch.tensor(1.0 / 8),
    }  # fmt: skip
    names = AscentStepGraph(vjp, lab).input_names
    return {k: feeds[k].numpy() for k in names}


def check_parity(
    generator,
    classifier,
    vjp: EditVJP,
    graphs: OnnxGraphs,
    batch_sizes=(1, 7, 128),
    atol: float = 1e-5,
    step_rtol: float = 1e-4,
    outlier_frac: float = 0.05,
    seed: int = 0,
) -> dict:
    """Run every graph on the CPU provider against torch; the report (``passed``, ``failure``: first problem)."""
    cpu = Placement()
    gen_sess, cls_sess = make_session(graphs.generator, cpu), make_session(graphs.classifier, cpu)
    unfolded = EditNet(generator, classifier, fold=False, channels_last=False)
    report: dict = {
        "passed": True, "failure": None, "atol": atol, "step_rtol": step_rtol,
        "outlier_frac": outlier_frac, "batch_sizes": list(batch_sizes),
        "provider": "CPUExecutionProvider", "generator": [], "classifier": [], "steps": {},
    }  # fmt: skip

    def fail(message: str) -> None:
        if report["passed"]:
            report["passed"], report["failure"] = False, message

    gen = torch.Generator().manual_seed(seed)
    for n in batch_sizes:
        z = torch.randn(n, vjp.z_dim, generator=gen)
        labels = torch.randint(0, vjp.n_labels, (n,), generator=gen) if vjp.n_labels else None
        feeds = {"z": z.numpy()} | ({"labels": labels.numpy()} if labels is not None else {})
        with torch.no_grad():
            images = vjp.generate(vjp.latent_input(z, labels))  # [n, C, H, W]
            images_u = unfolded.generate(unfolded.latent_input(z, labels))
            logits = vjp.classify(images)  # [n, A]
            logits_u = unfolded.classify(images)
        images_o = gen_sess.run(None, feeds)[0]
        logits_o = cls_sess.run(None, {"images": images.numpy()})[0]
        for name, ref, ort_out, plain in (
            ("generator", images.numpy(), images_o, images_u.numpy()),
            ("classifier", logits.numpy(), logits_o, logits_u.numpy()),
        ):
            diff, bound = _max_abs(ort_out, ref), _bound(ref, atol)
            report[name].append(
                {
                    "batch": n,
                    "max_abs_diff": diff,
                    "bound": bound,
                    "unfolded_max_abs_diff": _max_abs(ort_out, plain),
                }
            )
            if ort_out.shape != ref.shape:
                fail(f"{name} at batch {n}: onnxruntime shape {list(ort_out.shape)}, torch {list(ref.shape)}")
            elif not diff <= bound:
                fail(f"{name} at batch {n}: max |onnxruntime - torch| = {diff:.3g} > {bound:.3g}")

    for lab, model in graphs.steps.items():
        sess = make_session(model, cpu)
        module = AscentStepGraph(vjp, lab).eval()
        key = "lab" if lab else "clean"
        report["steps"][key] = []
        for n in batch_sizes:
            feeds = step_feeds(vjp, lab, n, seed + n)
            for t in (0, 1):
                with torch.no_grad():
                    ref = module(*(torch.from_numpy(np.asarray(feeds[k])) for k in module.input_names))
                ref = dict(zip(module.output_names, (r.numpy() for r in ref), strict=True))
                out = dict(zip(module.output_names, sess.run(None, feeds), strict=True))
                entry = _compare_step(ref, out, n, t, atol)
                per_row = entry.pop("per_row")
                over = int(np.sum(~(per_row <= step_rtol)))
                entry["rows_over_rtol"] = over
                report["steps"][key].append(entry)
                where = f"{key} step at batch {n}, t={t}"
                if not entry["same_status"]:
                    fail(f"{where}: statuses or moved flags differ")
                elif not (
                    entry["grad_rel_diff_median"] <= step_rtol and over <= max(1, int(outlier_frac * n))
                ):
                    fail(
                        f"{where}: d score / d z differs by {entry['grad_rel_diff_median']:.3g} relative (median row), "
                        f"{over} of {n} rows over {step_rtol:g}; largest gradient norm {entry['max_grad_norm']:.3g}"
                        + (
                            " (below fp32 resolution: random weights?)"
                            if entry["max_grad_norm"] < 1e-5
                            else ""
                        )
                    )
                elif not entry["logits_max_abs_diff"] <= entry["logits_bound"]:
                    fail(f"{where}: logits differ by {entry['logits_max_abs_diff']:.3g}")
                # The next step starts where torch's did, so both runs see the same inputs. Its starting
                # logits are moved by O(1) on the preserved attributes: right after step 0, ||delta|| is
                # tiny for some rows, and delta / ||delta|| then turns the ~1e-6 rounding difference of the
                # two forwards into a large change of direction. That is the objective's conditioning,
                # not the export's; a well-conditioned delta tests the penalty's gradient itself.
                offset = np.random.default_rng(seed + n).standard_normal(ref["logits"].shape)
                feeds = dict(feeds)
                feeds.update(logits0=(ref["logits"] + offset * feeds["preserve"]).astype(np.float32))
                feeds.update(z=ref["z_next"], status=ref["status_next"])
                feeds.update(steps_taken=ref["steps_next"], t=np.asarray(1, dtype=np.int32))
                if lab:
                    feeds["accum"] = ref["accum_next"]
    return report


def _compare_step(ref: dict, out: dict, n: int, t: int, atol: float) -> dict:
    # Per row, relative to the row's own largest gradient entry; z_next - z would be quantised by z's ulp.
    g_ref, g_ort = ref["grad"].astype(np.float64), out["grad"].astype(np.float64)
    scale = np.maximum(np.abs(g_ref).max(axis=1), _TINY)
    per_row = np.abs(g_ort - g_ref).max(axis=1) / scale  # [n]
    same = all(np.array_equal(ref[k], out[k]) for k in ("status_next", "moved", "steps_next"))
    return {
        "batch": n, "t": t, "grad_rel_diff_median": float(np.median(per_row)),
        "grad_rel_diff_max": float(per_row.max()), "per_row": per_row,
        "max_grad_norm": float(np.max(ref["grad_norm"], initial=0.0)),
        "z_next_max_abs_diff": _max_abs(out["z_next"], ref["z_next"]),
        "logits_max_abs_diff": _max_abs(out["logits"], ref["logits"]), "logits_bound": _bound(ref["logits"], atol),
        "same_status": bool(same),
    }  # fmt: skip
