"""onnxruntime against PyTorch for exported graphs, at several batch sizes; the report export_models gates on.

Forward graphs: images and logits must agree within ``atol`` (scaled by the output's magnitude where
that exceeds 1, since fp32 rounding is relative). The reference is the torch module that was exported
(BatchNorm folded); the distance to the user's unfolded modules is reported beside it.

Step graphs: two steps (t = 0 from z0, where delta is exactly 0, then t = 1 with starting logits away
from the current ones) through the exported step. The reference for the gradient d score / d z is
autograd (torch.func.vjp) through the user's own, unfolded modules, not the hand-written input-gradient
that was exported: a wrong adjoint (a flipped sign, a wrong output padding, another LeakyReLU slope) is
in both the exported graph and its torch twin, and only autograd tells. Statuses and moved flags are
compared with the torch twin of the graph, which computes the same update.

The gradient is compared per row, relative to the row's largest entry, and judged over every row of
every batch size together (a batch of one row says nothing alone):

- the median row must be within ``step_rtol``;
- each row is allowed max(step_rtol, 2 x its conditioning): the penalty's direction delta / ||delta||
  turns the two forwards' ~1e-6 logit difference into a gradient difference of about that difference
  over ||delta||, which is the objective's conditioning, not the export's;
- at most ``outlier_frac`` of the rows (at least one) may exceed their allowance: the gradient of a ReLU
  network is discontinuous where a pre-activation is 0, and a row that close to a kink takes the other
  side of it in one runtime. A wrong graph fails nearly every row instead.

The relative comparison needs gradients above fp32 resolution: the report gives the largest gradient
norm, so a tiny one (random-init models: about 1e-8 per step) is visible as the cause.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zsteer.kernels.objective import objective_torch
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
        "provider": "CPUExecutionProvider", "generator": [], "classifier": [], "steps": {}, "gradients": {},
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
        errors, allowed = [], []  # per row, pooled over every batch size and step
        for n in batch_sizes:
            feeds = step_feeds(vjp, lab, n, seed + n)
            for t in (0, 1):
                with torch.no_grad():
                    ref = module(*(torch.from_numpy(np.asarray(feeds[k])) for k in module.input_names))
                ref = dict(zip(module.output_names, (r.numpy() for r in ref), strict=True))
                out = dict(zip(module.output_names, sess.run(None, feeds), strict=True))
                true_grad = autograd_step_grad(unfolded, feeds, lab)
                entry = _compare_step(ref, out, true_grad, feeds, n, t, atol)
                errors.append(entry.pop("per_row"))
                allowed.append(np.maximum(step_rtol, 2 * entry.pop("conditioning")))
                report["steps"][key].append(entry)
                where = f"{key} step at batch {n}, t={t}"
                if entry["status_mismatch_rows"] > max(1, int(outlier_frac * n)):
                    fail(
                        f"{where}: statuses or moved flags differ in {entry['status_mismatch_rows']} of {n} rows"
                    )
                elif not entry["logits_max_abs_diff"] <= entry["logits_bound"]:
                    fail(f"{where}: logits differ by {entry['logits_max_abs_diff']:.3g}")
                # The next step starts where torch's did, so both runs see the same inputs. Its starting
                # logits are moved by O(1) on the preserved attributes, so that delta is well away from 0
                # and the penalty's own gradient is tested (right after step 0, ||delta|| is tiny).
                offset = np.random.default_rng(seed + n).standard_normal(ref["logits"].shape)
                feeds = dict(feeds)
                feeds.update(logits0=(ref["logits"] + offset * feeds["preserve"]).astype(np.float32))
                feeds.update(z=ref["z_next"], status=ref["status_next"])
                feeds.update(steps_taken=ref["steps_next"], t=np.asarray(1, dtype=np.int32))
                if lab:
                    feeds["accum"] = ref["accum_next"]
        per_row, allowance = np.concatenate(errors), np.concatenate(allowed)
        over = int(np.sum(~(per_row <= allowance)))
        median = float(np.median(per_row))
        max_norm = max(e["max_grad_norm"] for e in report["steps"][key])
        report["gradients"][key] = {
            "rows": int(per_row.size), "rel_diff_median": median, "rel_diff_max": float(per_row.max()),
            "rows_over_allowance": over, "max_grad_norm": max_norm,
        }  # fmt: skip
        if not (median <= step_rtol and over <= max(1, int(outlier_frac * per_row.size))):
            fail(
                f"{key} step: d score / d z differs from autograd by {median:.3g} relative (median of "
                f"{per_row.size} rows over batches {list(batch_sizes)}), {over} rows over their allowance; "
                f"largest gradient norm {max_norm:.3g}"
                + (" (below fp32 resolution: random weights?)" if max_norm < 1e-5 else "")
            )
    return report


def autograd_step_grad(net: EditNet, feeds: dict, lab: bool) -> np.ndarray:
    """d score / d z [n, z_dim] of a step's inputs by autograd through ``net`` (the user's modules)."""
    z = torch.from_numpy(np.asarray(feeds["z"]))
    labels = torch.from_numpy(np.asarray(feeds["labels"])) if "labels" in feeds else None
    weights = torch.from_numpy(np.asarray(feeds["weights"]))
    penalty = float(feeds["penalty"])
    if lab:  # as the step graph: mean over the targets and over the notebook's batch
        scale = float(feeds["lab_scale"])
        weights = weights / (weights != 0).sum(dim=1, keepdim=True).clamp_min(1) * scale
        penalty *= scale
    logits, pull = torch.func.vjp(net, net.latent_input(z, labels))
    start = logits if int(feeds["t"]) == 0 else torch.from_numpy(np.asarray(feeds["logits0"]))
    _, grad_logits = objective_torch(
        logits, start, weights, torch.from_numpy(np.asarray(feeds["preserve"])), penalty
    )
    (grad,) = pull(grad_logits)
    return grad[:, : z.shape[1]].detach().numpy()


def _compare_step(
    ref: dict, out: dict, true_grad: np.ndarray, feeds: dict, n: int, t: int, atol: float
) -> dict:
    # Per row, relative to the row's own largest gradient entry; z_next - z would be quantised by z's ulp.
    g_ref, g_ort = true_grad.astype(np.float64), out["grad"].astype(np.float64)
    scale = np.maximum(np.abs(g_ref).max(axis=1), _TINY)
    per_row = np.abs(g_ort - g_ref).max(axis=1) / scale  # [n]
    # Conditioning of the penalty's direction (module doc); at t = 0 delta is exactly 0.
    start = ref["logits"] if t == 0 else feeds["logits0"]
    delta = np.linalg.norm((ref["logits"] - start) * feeds["preserve"], axis=1)
    logit_error = np.abs(out["logits"] - ref["logits"]).max(axis=1)
    conditioning = np.where(delta > 0, logit_error / np.maximum(delta, _TINY), 0.0)
    mismatch = np.zeros(n, bool)
    for k in ("status_next", "moved", "steps_next"):
        mismatch |= ref[k].reshape(n) != out[k].reshape(n)
    return {
        "batch": n, "t": t, "grad_rel_diff_median": float(np.median(per_row)),
        "grad_rel_diff_max": float(per_row.max()), "per_row": per_row, "conditioning": conditioning,
        "max_grad_norm": float(np.max(ref["grad_norm"], initial=0.0)),
        "z_next_max_abs_diff": _max_abs(out["z_next"], ref["z_next"]),
        "logits_max_abs_diff": _max_abs(out["logits"], ref["logits"]), "logits_bound": _bound(ref["logits"], atol),
        "status_mismatch_rows": int(mismatch.sum()),
    }  # fmt: skip
