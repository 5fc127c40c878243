"""Quality gates for the demo models, a contact sheet of generator samples, and the model card.

    python -m zsteer.demo.evaluate demo/weights --card --sheet

Gates (all on procedural images from seeds no model was trained on):

- classifier and judge: at least 95% accuracy on every attribute;
- generator: images from z ~ N(0, I), scored by the judge (sigmoid > 0.5), show each attribute at a rate
  within 10 percentage points of the data set's rate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from zsteer.pipeline.checkpoints import load_classifier, load_generator

from .procedural import ATTRIBUTES, RATES, correlation, make_batch, sample_labels
from .train import DATA_SEEDS, LOG_NAME

MIN_ACCURACY = 0.95
MAX_RATE_GAP = 0.10


@torch.no_grad()
def _predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return (model(images) > 0).float()  # sigmoid > 0.5  <=>  logit > 0; [N, A]


@torch.no_grad()
def sample_generator(gen: torch.nn.Module, n: int, seed: int, batch: int = 256) -> torch.Tensor:
    """Images [n, 3, 64, 64] from z ~ N(0, I) drawn with ``seed``."""
    z = torch.randn(n, gen.z_dim, generator=torch.Generator().manual_seed(seed))  # [n, z_dim]
    return torch.cat([gen(z[i : i + batch]) for i in range(0, n, batch)])


def evaluate(
    weights_dir: str | Path, n: int = 2048, seed: int = DATA_SEEDS["eval"], batch: int = 256
) -> dict:
    """Accuracies of classifier and judge, and the judge's attribute rates on generator samples, with gates."""
    weights_dir = Path(weights_dir)
    result: dict = {"n": n, "seed": seed, "attributes": list(ATTRIBUTES)}
    models = {}
    for role in ("classifier", "judge"):
        loaded = load_classifier(weights_dir / f"{role}.safetensors")
        if loaded.attributes != ATTRIBUTES:
            raise ValueError(f"{role}: attributes {loaded.attributes} are not the procedural data set's")
        models[role] = loaded.module

    correct = {role: torch.zeros(len(ATTRIBUTES)) for role in models}
    label_sum = torch.zeros(len(ATTRIBUTES))
    for start in range(0, n, batch):
        images, labels = make_batch(min(batch, n - start), seed + start)  # [B, 3, 64, 64], [B, A]
        label_sum += labels.sum(0)
        for role, model in models.items():
            correct[role] += (_predict(model, images) == labels).float().sum(0)
    for role in models:
        acc = correct[role] / n
        result[role] = {
            "accuracy": {a: round(float(x), 4) for a, x in zip(ATTRIBUTES, acc, strict=True)},
            "min_accuracy": round(float(acc.min()), 4),
            "mean_accuracy": round(float(acc.mean()), 4),
        }
    data_rate = label_sum / n

    gen_path = weights_dir / "generator.safetensors"
    if gen_path.is_file():
        gen = load_generator(gen_path).module
        judged = torch.zeros(len(ATTRIBUTES))
        agree = torch.zeros(len(ATTRIBUTES))
        for start in range(0, n, batch):
            images = sample_generator(gen, min(batch, n - start), seed + 1 + start)
            by_judge = _predict(models["judge"], images)
            judged += by_judge.sum(0)
            agree += (by_judge == _predict(models["classifier"], images)).float().sum(0)
        rate = judged / n
        expected = torch.tensor([RATES[a] for a in ATTRIBUTES])
        gap = rate - expected
        result["generator"] = {
            "judged_rate": {a: round(float(x), 4) for a, x in zip(ATTRIBUTES, rate, strict=True)},
            "data_rate": {a: round(float(x), 4) for a, x in zip(ATTRIBUTES, expected, strict=True)},
            "heldout_label_rate": {a: round(float(x), 4) for a, x in zip(ATTRIBUTES, data_rate, strict=True)},
            "gap": {a: round(float(x), 4) for a, x in zip(ATTRIBUTES, gap, strict=True)},
            "max_abs_gap": round(float(gap.abs().max()), 4),
            # How often the steering classifier and the judge agree on generated images, which are slightly
            # off the data distribution: a lower bound on how far edits can be trusted.
            "classifier_judge_agreement": {
                a: round(float(x), 4) for a, x in zip(ATTRIBUTES, agree / n, strict=True)
            },
        }

    gates = {
        "classifier_accuracy": result["classifier"]["min_accuracy"] >= MIN_ACCURACY,
        "judge_accuracy": result["judge"]["min_accuracy"] >= MIN_ACCURACY,
    }
    if "generator" in result:
        gates["generator_rates"] = result["generator"]["max_abs_gap"] <= MAX_RATE_GAP
    result["gates"] = gates
    result["passed"] = all(gates.values())
    return result


@torch.no_grad()
def attribute_correlation(
    weights_dir: str | Path, n: int = 2048, seed: int = DATA_SEEDS["eval"], batch: int = 256
) -> dict:
    """Attribute correlation among generator samples (judge labels) against the procedural data's labels.

    The data set plants correlations (MouthOpen with Smiling, ...); a generator trained on it inherits
    them, and an edit along one attribute drags the correlated ones: this shows the user both matrices.
    """
    weights_dir = Path(weights_dir)
    judge = load_classifier(weights_dir / "judge.safetensors").module
    gen = load_generator(weights_dir / "generator.safetensors").module
    judged = torch.cat(
        [
            _predict(judge, sample_generator(gen, min(batch, n - start), seed + 1 + start))
            for start in range(0, n, batch)
        ]
    )  # [n, A]
    data = sample_labels(n, torch.Generator().manual_seed(seed))  # [n, A]
    return {
        "n": n,
        "attributes": list(ATTRIBUTES),
        "generated": correlation(judged).tolist(),
        "data": correlation(data).tolist(),
    }


def correlation_section(result: dict, min_abs: float = 0.1) -> dict:
    """A report section: attribute pairs whose correlation reaches ``min_abs`` in the data or the samples."""
    names = result["attributes"]
    lines = [
        f"Pearson correlation of attribute labels: {result['n']} generator samples labelled by the judge, "
        "against the procedural data set's labels (the entanglement the data planted).",
        "",
        "| pair | data | generated |",
        "|---|---|---|",
    ]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            data, gen = result["data"][i][j], result["generated"][i][j]
            if max(abs(data), abs(gen)) >= min_abs:
                lines.append(f"| {names[i]} / {names[j]} | {data:+.3f} | {gen:+.3f} |")
    return {"title": "Attribute correlation: generated samples vs data", "markdown": "\n".join(lines)}


def contact_sheet(
    images: torch.Tensor, path: str | Path, columns: int = 8, zoom: int = 2, pad: int = 2
) -> None:
    """Write images [N, 3, H, W] in [-1, 1] as a grid PNG."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = (n + columns - 1) // columns
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), "white")
    for i, px in enumerate(pixels):
        sheet.paste(Image.fromarray(px), (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    sheet = sheet.resize((sheet.width * zoom, sheet.height * zoom), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


MODEL_CARD = """# zsteer demo models

Small models trained by zsteer itself, so the demo runs without a face data set (none can be downloaded).
Written by `python -m zsteer.demo.evaluate demo/weights --card --sheet`; numbers below come from that run.

## Data set

`zsteer.demo.procedural`: 64x64 RGB cartoon heads, float in [-1, 1], CHW (like the course's normalised
CelebA), drawn on the fly from a seed. Attributes: {attributes}. Nuisance: head position (+-3 px), size
(0.88-1.08), tilt (+-9 degrees), skin/hair/background/shirt/hat/frame colours, eye height. Correlated on
purpose, as in CelebA: MouthOpen mostly with Smiling (P = 0.70 vs 0.15), Beard mostly with short hair
(0.50 vs 0.08 with LongHair), BlondHair rarely with DarkSkin (0.10 vs 0.45). Training and evaluation draw
from disjoint seed ranges (`zsteer.demo.train.DATA_SEEDS`).

## Models

All three are the course (C1W4B) architectures of `zsteer.pipeline.models`, stored in fp16
(`save_model(..., half=True)`); load with `zsteer.pipeline.checkpoints.load_generator` / `load_classifier`.

{specs}

- `generator`: DCGAN against a discriminator of the course-classifier architecture with one logit, its
  BatchNorm replaced by spectral normalisation (with BatchNorm the discriminator won within a few hundred
  steps); non-saturating loss, Adam 2e-4 betas (0.5, 0.999), course weight init except the generator's last
  layer (std 0.5/sqrt(fan-in): the course's 0.02 leaves a narrow generator's images grey for thousands of
  steps). The discriminator sees a random 58x58 crop of every real and generated image (its own per
  image): 58 is the size its unpadded convolutions (kernel 4, strides 2, 2, 3, 2) tile whole. Fed whole
  64x64 images, it never saw their last 6 rows and columns, so the generator got no gradient there and
  drew a noisy checkerboard border along the right and bottom edges (the earlier weights had it). The saved
  weights are an exponential moving average of the generator's (decay in the log), with BatchNorm
  running statistics recomputed over 8192 fresh latents.
- `classifier`: the model to steer with; one logit per attribute, BCE-with-logits, Adam 1e-3 betas
  (0.5, 0.999), cosine decay.
- `judge`: the same recipe at another width, another seed and other batches; use it only to score edits.

## Training

CPU only, `torch.set_num_threads` as below, on a 2-core machine shared with other work (times are wall
clock and depend on that load). Command: `python -m zsteer.demo.train --out demo/weights` (flags in `--help`).

{training}

## Evaluation

{n} held-out procedural images (seed {seed}) for the classifiers; {n} generator samples (z ~ N(0, I)) scored
by the judge (sigmoid > 0.5). "Data rate" is the data set's population rate of each attribute.

{table}

Gates (classifiers >= 95% on every attribute; generator rates within 10 points of the data):

{gates}

Classifier/judge agreement on generator samples: {agreement}.

`samples.png`: 32 generator samples.

## Limits

- Cartoons, not faces: edits that work here say the machinery works, not that it will on CelebA.
- The generator is small and briefly trained (CPU): its images are blurrier than the data, with fuzzy
  hats and mouths.
  Smiling is its weakest attribute (fewest samples, lowest classifier/judge agreement).
- The judge was trained on the same procedural distribution as the classifier, so it shares its blind
  spots there.
"""


def _table(result: dict) -> str:
    rows = [
        "| attribute | data rate | classifier acc. | judge acc. | generator rate (judge) | gap |",
        "|---" * 6 + "|",
    ]
    gen = result.get("generator", {})
    for a in ATTRIBUTES:
        g_rate = f"{gen['judged_rate'][a]:.3f}" if gen else "-"
        g_gap = f"{gen['gap'][a]:+.3f}" if gen else "-"
        rows.append(
            f"| {a} | {RATES[a]:.3f} | {result['classifier']['accuracy'][a]:.4f} | "
            f"{result['judge']['accuracy'][a]:.4f} | {g_rate} | {g_gap} |"
        )
    return "\n".join(rows)


def write_model_card(weights_dir: str | Path, result: dict) -> Path:
    """MODEL_CARD.md beside the weights, from the training log and an ``evaluate`` result."""
    weights_dir = Path(weights_dir)
    log_path = weights_dir / LOG_NAME
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    specs = {
        role: json.loads((weights_dir / f"{role}.json").read_text())
        for role in ("generator", "classifier", "judge")
        if (weights_dir / f"{role}.json").is_file()
    }
    card = MODEL_CARD.format(
        attributes=", ".join(f"`{a}`" for a in ATTRIBUTES),
        table=_table(result),
        n=result["n"],
        seed=result["seed"],
        gates="\n".join(f"- {k}: {'pass' if v else 'FAIL'}" for k, v in result["gates"].items()),
        training="\n".join(f"- {role}: `{json.dumps(info)}`" for role, info in log.items()),
        specs="\n".join(
            f"- {role}: `{json.dumps({k: v for k, v in s.items() if k != 'attributes'})}`"
            for role, s in specs.items()
        ),
        agreement=", ".join(
            f"{a} {x:.3f}"
            for a, x in result.get("generator", {}).get("classifier_judge_agreement", {}).items()
        )
        or "-",
    )
    path = weights_dir / "MODEL_CARD.md"
    path.write_text(card)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zsteer.demo.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("weights_dir", type=Path, nargs="?", default=Path(__file__).parent / "weights")
    ap.add_argument("-n", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=DATA_SEEDS["eval"])
    ap.add_argument("--card", action="store_true", help="write MODEL_CARD.md")
    ap.add_argument("--sheet", action="store_true", help="write samples.png (32 generator samples)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = evaluate(args.weights_dir, n=args.n, seed=args.seed)
    print(json.dumps(result, indent=2))
    if args.sheet:
        gen = load_generator(args.weights_dir / "generator.safetensors").module
        contact_sheet(sample_generator(gen, 32, args.seed), args.weights_dir / "samples.png")
    if args.card:
        print(f"wrote {write_model_card(args.weights_dir, result)}")
    raise SystemExit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
