"""A small ResNet judge for the demo, trained on the procedural data and shipped as an imported model.

    python -m zsteer.demo.resnet_judge --out demo/weights/resnet_judge.pt2          # ~3 min, 1 thread

The demo's own judge has the steering classifier's architecture, so both can share blind spots; this one
is another architecture (residual blocks with BatchNorm, global average pooling, a linear head) trained
from other batches, so an edit that fools the steering classifier is less likely to fool it too. It is
written with ``zsteer import``'s library call (a .pt2 program and its sidecar), the same path a user's own
classifier takes, and is used as ``zsteer report --judge demo/weights/resnet_judge.pt2``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zsteer.pipeline.importer import ClassifierCard, write_imported

from .procedural import ATTRIBUTES, SIZE, make_batch
from .train import fit_attributes

# Data seeds apart from the ones demo/train.py uses (classifier 1e6, judge 2e6, gan 3e6, eval 9e6).
TRAIN_SEED = 4_000_000
EVAL_SEED = 9_000_000


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (a 1x1 strided conv where the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.skip(x))


class ResNetJudge(nn.Module):
    """images [N, 3, 64, 64] in [-1, 1] -> logits [N, A]: stem, three residual stages, pooling, linear."""

    def __init__(self, width: int = 16, n_out: int = len(ATTRIBUTES)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            Block(width, width, 1), Block(width, 2 * width, 2), Block(2 * width, 4 * width, 2)
        )  # 32 -> 32 -> 16 -> 8
        self.head = nn.Linear(4 * width, n_out)

    def forward(self, images):
        return self.head(self.stages(self.stem(images)).mean(dim=(2, 3)))


@dataclass(frozen=True)
class JudgeTraining:
    """How the ResNet judge is trained (recorded beside it)."""

    steps: int = 1200  # Adam steps (cosine decay to zero); 400 left Smiling at 80% held-out accuracy
    batch: int = 64  # images per step
    lr: float = 2e-3  # peak learning rate
    width: int = 16  # channels of the first stage
    seed: int = 0  # initialisation and data seed
    eval_images: int = 1024  # held-out images for the accuracy in the log


def train_resnet_judge(cfg: JudgeTraining, log_every: int = 50) -> tuple[ResNetJudge, dict]:
    """Train the judge; returns (eval-mode module, info with held-out accuracy per attribute)."""
    torch.manual_seed(cfg.seed)
    model = ResNetJudge(cfg.width)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    start = time.perf_counter()
    fit_attributes(
        model, opt, cfg.steps, cfg.batch, TRAIN_SEED + cfg.seed * 100_000, "resnet judge", log_every
    )
    accuracy = held_out_accuracy(model, cfg.eval_images)
    info = asdict(cfg) | {
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "accuracy": {a: round(float(x), 4) for a, x in zip(ATTRIBUTES, accuracy, strict=True)},
        "min_accuracy": round(float(accuracy.min()), 4),
    }
    return model, info


@torch.no_grad()
def held_out_accuracy(model: nn.Module, n: int, batch: int = 256) -> torch.Tensor:
    """[A] accuracy of ``model`` (logit > 0) on ``n`` images no training run saw."""
    correct = torch.zeros(len(ATTRIBUTES))
    for s in range(0, n, batch):
        images, labels = make_batch(min(batch, n - s), EVAL_SEED + s)
        correct += ((model(images) > 0).float() == labels).float().sum(0)
    return correct / n


def write_judge(model: nn.Module, out: Path, info: dict) -> Path:
    """The judge as an imported model: ``out`` (.pt2), its sidecar, and ``out``.training.json."""
    card = ClassifierCard(input_shape=(3, SIZE, SIZE), attributes=ATTRIBUTES, input_range=(-1.0, 1.0))
    write_imported(model, card, out, source="zsteer.demo.resnet_judge:ResNetJudge")
    log = out.with_suffix(".training.json")
    log.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="NAME.pt2 (its sidecar goes beside it)")
    parser.add_argument("--steps", type=int, default=JudgeTraining.steps)
    parser.add_argument("--seed", type=int, default=JudgeTraining.seed)
    args = parser.parse_args(argv)
    model, info = train_resnet_judge(JudgeTraining(steps=args.steps, seed=args.seed))
    write_judge(model, args.out, info)
    print(
        json.dumps({"out": str(args.out), "min_accuracy": info["min_accuracy"], "seconds": info["seconds"]})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
