"""Non-course architectures for the bring-your-own-model tests (no tests here).

Three tiny models of shapes zsteer's course stacks cannot express, with enough gain that an edit moves z:

- ``ResidualGenerator``: z -> linear -> 4x4 map -> residual blocks (conv, BatchNorm, ReLU, skip add) with
  nearest upsampling -> 16x16 RGB in [-1, 1] (tanh);
- ``EmbeddingGenerator``: z and a class label (nn.Embedding, concatenated) -> transposed convs -> 1 x 12 x 12
  in [0, 1] (sigmoid): the class enters as a second, integer input;
- ``PooledClassifier``: convs with GroupNorm and SiLU, global average pooling, a linear head; reads
  3 x 20 x 20 images in [0, 1] (so every generator's images are resized and rescaled to reach it).

Each factory is importable as ``byokit:...``, which is how `zsteer import --module` finds user code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zsteer.pipeline.importer import ClassifierCard, GeneratorCard, write_imported

Z_DIM, N_CLASSES = 6, 3
ATTRIBUTES = ("smile", "glasses", "hat", "beard")


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + F.relu(self.norm(self.conv(x)))


class ResidualGenerator(nn.Module):
    """z [N, z_dim] -> images [N, 3, 16, 16] in [-1, 1]."""

    def __init__(self, z_dim: int = Z_DIM, width: int = 8):
        super().__init__()
        self.width = width
        self.fc = nn.Linear(z_dim, width * 4 * 4)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(2))
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, z):
        x = self.fc(z).reshape(-1, self.width, 4, 4)
        for block in self.blocks:
            x = F.interpolate(block(x), scale_factor=2, mode="nearest")
        return torch.tanh(self.out(x))


class EmbeddingGenerator(nn.Module):
    """(z [N, z_dim], labels [N] int64) -> images [N, 1, 12, 12] in [0, 1]."""

    def __init__(self, z_dim: int = Z_DIM, n_classes: int = N_CLASSES, width: int = 8):
        super().__init__()
        self.embed = nn.Embedding(n_classes, 4)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim + 4, width, 3, 1),  # 1 -> 3
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, width, 4, 2),  # 3 -> 8
            nn.ELU(),
            nn.ConvTranspose2d(width, 1, 5, 1),  # 8 -> 12
        )

    def forward(self, z, labels):
        x = torch.cat([z, self.embed(labels)], dim=1)
        return torch.sigmoid(self.net(x[:, :, None, None]))


class PooledClassifier(nn.Module):
    """images [N, 3, 20, 20] in [0, 1] -> logits [N, 4]."""

    def __init__(self, n_out: int = len(ATTRIBUTES), width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(2, width), nn.SiLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.GroupNorm(2, width * 2), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(width * 2, n_out)

    def forward(self, images):
        return self.head(self.features(images).mean(dim=(2, 3)))


class StackGenerator(nn.Module):
    """A plain chain of layers the hand-written gradient knows (so onnxruntime can take ascent steps):
    z [N, z_dim] -> images [N, 3, 10, 10] in [-1, 1]."""

    def __init__(self, z_dim: int = Z_DIM):
        super().__init__()
        self.z_dim = z_dim
        self.net = nn.Sequential(
            nn.ConvTranspose2d(z_dim, 8, 4, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2), nn.Tanh()
        )  # fmt: skip

    def forward(self, z):
        return self.net(z.reshape(-1, self.z_dim, 1, 1))


class StackClassifier(nn.Module):
    """A chain of convolutions reading 3 x 10 x 10 images in [0, 1] -> logits [N, 4]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 4, 2), nn.LeakyReLU(0.2), nn.Conv2d(8, len(ATTRIBUTES), 4, 1)
        )

    def forward(self, images):
        return self.net(images).flatten(1)


class ArgmaxClassifier(PooledClassifier):
    """A classifier whose logits are rounded: no gradient reaches the image (refused at load)."""

    def forward(self, images):
        return torch.round(super().forward(images) * 4)


@torch.no_grad()
def with_gain(module: nn.Module, seed: int) -> nn.Module:
    """Deterministic weights with unit gain and non-trivial BatchNorm statistics, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            fan = (
                layer.weight[0].numel()
                if not isinstance(layer, nn.ConvTranspose2d)
                else layer.weight.shape[0] * 4
            )
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * (2.0 / fan) ** 0.5)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
        elif isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=g) * 0.1)
            layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g) + 0.5)
        elif isinstance(layer, nn.Embedding):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
    return module.eval()


def residual_generator() -> nn.Module:
    return with_gain(ResidualGenerator(), 1)


def embedding_generator() -> nn.Module:
    return with_gain(EmbeddingGenerator(), 2)


def pooled_classifier() -> nn.Module:
    return with_gain(PooledClassifier(), 3)


RESIDUAL_CARD = GeneratorCard(z_dim=Z_DIM)
EMBEDDING_CARD = GeneratorCard(
    z_dim=Z_DIM, n_classes=N_CLASSES, class_input="embedding", output_range=(0.0, 1.0)
)
STACK_CARD = ClassifierCard(input_shape=(3, 10, 10), attributes=ATTRIBUTES, input_range=(0.0, 1.0))
POOLED_CARD = ClassifierCard(input_shape=(3, 20, 20), attributes=ATTRIBUTES, input_range=(0.0, 1.0))


def import_all(folder) -> dict:
    """The three models imported into ``folder`` (the library call behind `zsteer import`): name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "residual": folder / "residual.pt2",
        "embedding": folder / "embedding.pt2",
        "pooled": folder / "pooled.pt2",
    }
    write_imported(residual_generator(), RESIDUAL_CARD, paths["residual"], source="byokit:residual_generator")
    write_imported(
        embedding_generator(), EMBEDDING_CARD, paths["embedding"], source="byokit:embedding_generator"
    )
    write_imported(pooled_classifier(), POOLED_CARD, paths["pooled"], source="byokit:pooled_classifier")
    return paths
