"""The course architectures (DeepLearning.AI GANs, C1W4A / C1W4B), parameter names unchanged.

The course checkpoints load into these modules as they are. The one change from the notebooks is the
reshape: the course uses ``view(len(x), ...)``, which freezes the batch size into a traced or exported
graph; here it is ``view(-1, ...)`` / ``flatten(1)``, which computes the same numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

GENERATOR_KINDS = ("course_generator", "course_conditional_generator")
CLASSIFIER_KINDS = ("course_classifier",)


@dataclass(frozen=True)
class GeneratorSpec:
    """What is needed to rebuild a generator before loading its weights."""

    # "course_generator" (C1W4B, 64x64 RGB) or "course_conditional_generator" (C1W4A, 28x28).
    kind: str = "course_generator"
    # Length of the latent z the user edits (the course uses 64).
    z_dim: int = 64
    # Width multiplier of the course blocks; the demo models use a smaller one to train on CPU.
    hidden_dim: int = 64
    # Image channels the generator draws (3 for faces, 1 for MNIST).
    im_chan: int = 3
    # Classes of a conditional generator: a one-hot vector of this length is concatenated to z. 0 = none.
    n_classes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ClassifierSpec:
    """What is needed to rebuild an attribute classifier before loading its weights."""

    # Only the course classifier today; the field keeps checkpoints self-describing.
    kind: str = "course_classifier"
    # Image channels the classifier reads; must match the generator's (or be 3 for a 1-channel generator).
    im_chan: int = 3
    # One logit per attribute (40 for CelebA).
    n_classes: int = 40
    # Width multiplier of the course blocks.
    hidden_dim: int = 64
    # Side of the square image the classifier expects; generator images of another size are resized.
    image_size: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


class CourseGenerator(nn.Module):
    """C1W4B generator: z [N, z_dim] -> images [N, im_chan, 64, 64] in [-1, 1]."""

    def __init__(self, z_dim: int = 64, im_chan: int = 3, hidden_dim: int = 64):
        super().__init__()
        self.z_dim = z_dim
        self.input_dim = z_dim
        self.gen = nn.Sequential(
            _gen_block(z_dim, hidden_dim * 8),
            _gen_block(hidden_dim * 8, hidden_dim * 4),
            _gen_block(hidden_dim * 4, hidden_dim * 2),
            _gen_block(hidden_dim * 2, hidden_dim),
            _gen_block(hidden_dim, im_chan, kernel_size=4, final_layer=True),
        )

    def forward(self, noise: torch.Tensor) -> torch.Tensor:  # [N, input_dim] -> [N, C, H, W]
        return self.gen(noise.view(-1, self.input_dim, 1, 1))


class CourseConditionalGenerator(nn.Module):
    """C1W4A generator: [z, one_hot(label)] [N, z_dim + n_classes] -> images [N, im_chan, 28, 28]."""

    def __init__(self, input_dim: int = 74, im_chan: int = 1, hidden_dim: int = 64):
        super().__init__()
        self.input_dim = input_dim
        self.gen = nn.Sequential(
            _gen_block(input_dim, hidden_dim * 4),
            _gen_block(hidden_dim * 4, hidden_dim * 2, kernel_size=4, stride=1),
            _gen_block(hidden_dim * 2, hidden_dim),
            _gen_block(hidden_dim, im_chan, kernel_size=4, final_layer=True),
        )

    def forward(self, noise: torch.Tensor) -> torch.Tensor:  # [N, input_dim] -> [N, C, 28, 28]
        return self.gen(noise.view(-1, self.input_dim, 1, 1))


class CourseClassifier(nn.Module):
    """C1W4B classifier: images [N, im_chan, 64, 64] -> raw logits [N, n_classes]."""

    def __init__(self, im_chan: int = 3, n_classes: int = 40, hidden_dim: int = 64):
        super().__init__()
        self.classifier = nn.Sequential(
            _classifier_block(im_chan, hidden_dim),
            _classifier_block(hidden_dim, hidden_dim * 2),
            _classifier_block(hidden_dim * 2, hidden_dim * 4, stride=3),
            _classifier_block(hidden_dim * 4, n_classes, final_layer=True),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:  # [N, C, 64, 64] -> [N, n_classes]
        return self.classifier(image).flatten(1)


def _gen_block(cin: int, cout: int, kernel_size: int = 3, stride: int = 2, final_layer: bool = False):
    if final_layer:
        return nn.Sequential(nn.ConvTranspose2d(cin, cout, kernel_size, stride), nn.Tanh())
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, kernel_size, stride),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _classifier_block(cin: int, cout: int, kernel_size: int = 4, stride: int = 2, final_layer: bool = False):
    if final_layer:
        return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride))
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, stride),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


def build_generator(spec: GeneratorSpec) -> nn.Module:
    """A freshly initialised generator of the given spec."""
    if spec.kind == "course_generator":
        if spec.n_classes:
            return CourseGenerator(spec.z_dim + spec.n_classes, spec.im_chan, spec.hidden_dim)
        return CourseGenerator(spec.z_dim, spec.im_chan, spec.hidden_dim)
    if spec.kind == "course_conditional_generator":
        return CourseConditionalGenerator(spec.z_dim + spec.n_classes, spec.im_chan, spec.hidden_dim)
    raise ValueError(f"unknown generator kind {spec.kind!r}; expected one of {', '.join(GENERATOR_KINDS)}")


# (kernel, stride) of the course classifier's convolutions, in order.
_CLASSIFIER_CONVS = ((4, 2), (4, 2), (4, 3), (4, 2))


def classifier_output_side(image_size: int) -> int:
    """Side of the course classifier's last feature map for square images of ``image_size`` (0: none)."""
    side = image_size
    for kernel, stride in _CLASSIFIER_CONVS:
        side = (side - kernel) // stride + 1
        if side < 1:
            return 0
    return side


def classifier_image_sizes() -> range:
    """The image sizes the course classifier reduces to one logit per attribute (58 to 81 pixels)."""
    sizes = [n for n in range(1, 1024) if classifier_output_side(n) == 1]
    return range(sizes[0], sizes[-1] + 1)


def build_classifier(spec: ClassifierSpec) -> nn.Module:
    """A freshly initialised classifier of the given spec."""
    if spec.kind != "course_classifier":
        raise ValueError(
            f"unknown classifier kind {spec.kind!r}; expected one of {', '.join(CLASSIFIER_KINDS)}"
        )
    sizes = classifier_image_sizes()
    if spec.image_size not in sizes:
        raise ValueError(
            f"image_size {spec.image_size} does not fit the course classifier, which reduces images of "
            f"{sizes.start} to {sizes.stop - 1} pixels to one logit per attribute (the course uses 64)"
        )
    return CourseClassifier(spec.im_chan, spec.n_classes, spec.hidden_dim)
