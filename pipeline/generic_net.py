"""The edit network for any generator and classifier: the seam between zsteer and a model it did not write.

``EditNet`` (network.py) is the course architectures' fast path: their layers flattened, BatchNorm folded
into the convolutions, channels_last. ``ModelNet`` is the same interface over any two ``LoadedModel``
modules, called as they are: an imported program (pipeline/imported.py), or a course model paired with
an imported one. Both give the engine what it asks for:

    z_dim, n_labels, input_dim                    sizes
    latent_input(z [N, z_dim], labels [N])        -> z_in [N, input_dim] ([z, one_hot(label)])
    generate(z_in)                                -> images [N, C, H, W] in [-1, 1]
    classify(images)                              -> logits [N, A] (resized to the classifier's input)
    forward(z_in) = classify(generate(z_in))      what torch.func.vjp differentiates

Batch invariance: a row's bits must not depend on its neighbours or the batch size (docs/ARCHITECTURE.md).
The course stacks hold it with batches of at least ``MIN_ROWS`` rows, but an arbitrary graph does not:
a GEMM picks its kernel by the number of rows, and torch's vectorised sigmoid / SiLU / ELU compute the
last elements of a tensor with a scalar loop that rounds differently, so a row's bits depend on where it
sits. ModelNet therefore runs every row in a call of its own, as ``MIN_ROWS`` copies of itself: each call
of the graph sees exactly the same tensor for a given row, whatever batch it came in. That costs the
batching (``row_by_row=False`` gives it back, with rows equal only within fp32 rounding).

Between the two models ModelNet does what EditNet does for the course's 28 -> 64 pixels: a bilinear
resize to the classifier's input size, a 1-channel image repeated for a 3-channel classifier; the pixel
range of each model is its own module's business (imported.py maps it to [-1, 1]). It says so in a log
line when it resizes.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .ascent_loop import MIN_ROWS, pad_rows
from .imported import ImportedClassifierSpec, is_imported
from .loaded import LoadedModel
from .models import ClassifierSpec
from .network import EditNet, fit_to_classifier, latent_input

log = logging.getLogger(__name__)


def classifier_input_shape(classifier: LoadedModel) -> tuple[int, int, int]:
    """[C, H, W] of the images the classifier reads."""
    spec = classifier.spec
    if isinstance(spec, ImportedClassifierSpec):
        return spec.input_shape
    assert isinstance(spec, ClassifierSpec)
    return (spec.im_chan, spec.image_size, spec.image_size)


class ModelNet(nn.Module):
    """Frozen latent -> logits network over any generator and classifier modules (module docstring)."""

    def __init__(self, generator: LoadedModel, classifier: LoadedModel, row_by_row: bool = True):
        super().__init__()
        # One call of the graphs per row (MIN_ROWS copies of it): a row's bits independent of its batch.
        self.row_by_row = row_by_row
        gspec = generator.spec
        self.z_dim, self.n_labels = gspec.z_dim, gspec.n_classes
        self.input_dim = self.z_dim + self.n_labels
        self.gen, self.cls = generator.module, classifier.module
        self.class_chan, self.class_h, self.class_w = classifier_input_shape(classifier)
        labels = torch.zeros(2, dtype=torch.int64) if self.n_labels else None
        with torch.no_grad():  # two probe rows give the generator's image shape, whatever it is
            probe = self.gen(latent_input(torch.zeros(2, self.z_dim), labels, self.n_labels))
        self.im_chan, height, width = (int(d) for d in probe.shape[1:])
        if self.class_chan != self.im_chan and not (self.im_chan == 1 and self.class_chan == 3):
            raise ValueError(
                f"classifier reads {self.class_chan} channels but the generator draws {self.im_chan}"
            )
        resize = (height, width) != (self.class_h, self.class_w)  # for the log line: fit_to_classifier acts
        expand = self.class_chan != self.im_chan
        if resize or expand or is_imported(generator) or is_imported(classifier):
            g_range = getattr(gspec, "output_range", (-1.0, 1.0))
            c_range = getattr(classifier.spec, "input_range", (-1.0, 1.0))
            log.info(
                "generator %s draws %dx%dx%d in [%g, %g]; classifier %s reads %dx%dx%d in [%g, %g]: %s",
                generator.path, self.im_chan, height, width, *g_range, classifier.path, self.class_chan,
                self.class_h, self.class_w, *c_range, _adaptation(resize, expand, g_range, c_range),
            )  # fmt: skip
        for p in self.parameters():
            p.requires_grad_(False)

    def latent_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """[N, z_dim] (+ labels [N]) -> [N, input_dim]."""
        return latent_input(z, labels, self.n_labels)

    def generate(self, z_in: torch.Tensor) -> torch.Tensor:  # [N, input_dim] -> [N, C, H, W] in [-1, 1]
        return self._per_row(self.gen, z_in)

    def classify(self, images: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, A]
        return self._per_row(self._classify, images)

    def forward(self, z_in: torch.Tensor) -> torch.Tensor:  # [N, input_dim] -> logits [N, A]
        return self._per_row(lambda rows: self._classify(self.gen(rows)), z_in)

    def _classify(self, images: torch.Tensor) -> torch.Tensor:  # [m, C, H, W] -> [m, A]
        return self.cls(fit_to_classifier(images, self.class_chan, self.class_h, self.class_w))

    def _per_row(self, fn, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)``; row by row as MIN_ROWS copies of each row when ``row_by_row`` (module docstring)."""
        return each_row_alone(fn, x) if self.row_by_row else fn(x)

    def train(self, mode: bool = True):
        """The modules are frozen graphs; only the flag changes (torch refuses eval() on exported ones)."""
        self.training = mode
        return self


def each_row_alone(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for x [N, ...], one call of ``fn`` per row, run as MIN_ROWS copies of the row: every call
    sees the same tensor for a given row, whatever batch it came in (module docstring)."""
    copies = torch.zeros(MIN_ROWS, dtype=torch.int64, device=x.device)
    return torch.cat([fn(x[i : i + 1].index_select(0, copies))[:1] for i in range(x.shape[0])])


def invariant_call(model: LoadedModel, fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for x [N, ...], where ``fn`` runs ``model``'s module as it is (a forward outside the
    engine: the report's judge, a sheet's render), with each row's bits independent of its batch: row by
    row for an imported model, as ModelNet runs it; a course model in one call of at least MIN_ROWS rows."""
    if is_imported(model):
        return each_row_alone(fn, x)
    m = x.shape[0]
    return fn(pad_rows(x, max(m, MIN_ROWS)))[:m]


def _adaptation(resize: bool, expand: bool, g_range: tuple, c_range: tuple) -> str:
    steps = ["resized (bilinear)"] if resize else []
    if expand:
        steps.append("its one channel repeated")
    if g_range != c_range:
        steps.append(f"rescaled from [{g_range[0]:g}, {g_range[1]:g}] to [{c_range[0]:g}, {c_range[1]:g}]")
    return "the images are " + ", ".join(steps) if steps else "the images pass as they are"


def build_net(generator: LoadedModel, classifier: LoadedModel, fast: bool) -> nn.Module:
    """The edit network for a pair: EditNet (the course fast path, folded when ``fast``) or ModelNet."""
    if is_imported(generator) or is_imported(classifier):
        return ModelNet(generator, classifier)
    return EditNet(generator, classifier, fold=fast, channels_last=fast, fast_forms=fast)
