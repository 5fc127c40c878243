"""The frozen edit network: latent -> image -> logits, with BatchNorm folded into the convolutions.

Generator and classifier never train here, so each eval-mode BatchNorm is an affine map that folds into
the convolution before it. What is left is a flat stack of Conv2d / ConvTranspose2d / activation
layers: faster, and the shape the ONNX exporter builds its hand-written gradient from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import LoadedModel
from .phase_conv import PhaseLayer, runs_by_phases
from .wide_conv import WideLayer, can_run_wide, transpose_then_bias

SUPPORTED_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU, nn.Tanh)


def flatten_layers(module: nn.Module) -> list[nn.Module]:
    """The leaf layers of nested Sequentials, in order; an unsupported layer is refused by name."""
    layers: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, nn.Sequential):
            layers.extend(flatten_layers(child))
        elif isinstance(child, SUPPORTED_LAYERS):
            layers.append(child)
        else:
            raise TypeError(
                f"layer {type(child).__name__} is not supported by zsteer's frozen stacks "
                f"(supported: {', '.join(t.__name__ for t in SUPPORTED_LAYERS)})"
            )
    return layers


@torch.no_grad()
def fold_batchnorm(layers: list[nn.Module]) -> nn.Sequential:
    """Copy of ``layers`` with each eval-mode BatchNorm2d folded into the convolution before it."""
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d):
            conv = out[-1] if out else None
            if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
                raise TypeError("BatchNorm2d must follow a convolution to be folded")
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)  # [C]
            shift = layer.bias - layer.running_mean * scale
            # Conv2d weights are [out, in, k, k]; ConvTranspose2d weights are [in, out, k, k].
            view = (-1, 1, 1, 1) if isinstance(conv, nn.Conv2d) else (1, -1, 1, 1)
            conv.weight.mul_(scale.view(view))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            continue
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            copy = type(layer)(
                layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                **({"output_padding": layer.output_padding} if isinstance(layer, nn.ConvTranspose2d) else {}),
                groups=layer.groups, bias=layer.bias is not None, dilation=layer.dilation,
            )  # fmt: skip
            copy.load_state_dict(layer.state_dict())
            out.append(copy)
        elif isinstance(layer, nn.ReLU):
            out.append(nn.ReLU())  # never in place: autograd and torch.func need the pre-activation
        elif isinstance(layer, nn.LeakyReLU):
            out.append(nn.LeakyReLU(layer.negative_slope))
        else:
            out.append(nn.Tanh())
    stack = nn.Sequential(*out).eval()
    for p in stack.parameters():
        p.requires_grad_(False)
    return stack


def latent_input(z: torch.Tensor, labels: torch.Tensor | None, n_labels: int) -> torch.Tensor:
    """The generator's input [N, z_dim + n_labels]: a conditional generator gets one_hot(label) after z."""
    if not n_labels:
        return z
    if labels is None:
        raise ValueError("this generator is conditional: every row needs a label")
    return torch.cat([z, F.one_hot(labels.long(), n_labels).to(z.dtype)], dim=1)


def runtime_layers(layers: nn.Sequential, fast_forms: bool) -> nn.ModuleList:
    """The layers a network calls: ``layers`` themselves or, when ``fast_forms``, each convolution in the
    CPU form that runs it fastest: the narrow ones by phases (pipeline/phase_conv.py), the wide ones by GEMM
    where one side is a map of at most GEMM_MAX_PIXELS pixels (pipeline/wide_conv.py). Parameters are
    shared, not copied."""
    if not fast_forms:
        return nn.ModuleList(layers)
    return nn.ModuleList(fast_form(layer) for layer in layers)


def fast_form(layer: nn.Module) -> nn.Module:
    """``layer`` in the engine's CPU form for it (itself where no faster form applies)."""
    if runs_by_phases(layer):
        return PhaseLayer(layer)
    return WideLayer(layer) if can_run_wide(layer) else layer


def run_layers(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """``x`` through ``layers``. An activation right after a convolution runs in place on the
    convolution's fresh output (one pass over the largest tensors less, forward and backward alike)."""
    fresh = False  # whether x is a convolution's own output, which nothing else holds
    for layer in layers:
        if isinstance(layer, nn.ConvTranspose2d):
            x, fresh = transpose_then_bias(layer, x), True
        elif isinstance(layer, nn.ReLU) and fresh:
            x = x.relu_()
        elif isinstance(layer, nn.LeakyReLU) and fresh and layer.negative_slope > 0:
            # autograd recomputes the mask from the output, which needs a positive slope
            x = F.leaky_relu_(x, layer.negative_slope)
        elif isinstance(layer, nn.Tanh) and fresh:
            x = x.tanh_()
        else:
            x, fresh = layer(x), isinstance(layer, nn.Conv2d | PhaseLayer | WideLayer)
    return x


class EditNet(nn.Module):
    """Frozen latent -> logits network. ``z_in`` is z, or [z, one_hot(label)] for a conditional generator."""

    def __init__(
        self,
        generator: LoadedModel,
        classifier: LoadedModel,
        fold: bool = True,
        channels_last: bool = True,
        fast_forms: bool = False,
    ):
        """``fold`` BatchNorm into the convolutions, ``channels_last`` activations, and the convolutions in
        their ``fast_forms`` (``runtime_layers``; the engine's fast layout turns it on, generic_net.build_net).
        Each changes results only by rounding. Off, the network runs the plain layers ``gen`` / ``cls``
        that the ONNX exporter's gradient is built from, bit for bit."""
        super().__init__()
        gspec, cspec = generator.spec, classifier.spec
        self.z_dim = gspec.z_dim
        self.n_labels = gspec.n_classes
        self.input_dim = gspec.z_dim + gspec.n_classes
        self.im_chan = gspec.im_chan
        self.class_size = cspec.image_size
        self.class_chan = cspec.im_chan
        if self.class_chan not in (self.im_chan, 3) or (self.class_chan == 3 and self.im_chan not in (1, 3)):
            raise ValueError(
                f"classifier reads {self.class_chan} channels but the generator draws {self.im_chan}"
            )
        gen_layers = flatten_layers(generator.module.gen)
        cls_layers = flatten_layers(classifier.module.classifier)
        if fold:
            self.gen, self.cls = fold_batchnorm(gen_layers), fold_batchnorm(cls_layers)
        else:
            self.gen, self.cls = nn.Sequential(*gen_layers).eval(), nn.Sequential(*cls_layers).eval()
        # gen / cls stay the plain stacks (the ONNX exporter builds its gradient from them); these run.
        self.run_gen, self.run_cls = (
            runtime_layers(self.gen, fast_forms),
            runtime_layers(self.cls, fast_forms),
        )
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.to(memory_format=self.memory_format)
        for p in self.parameters():
            p.requires_grad_(False)

    def latent_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """[N, z_dim] (+ labels [N]) -> [N, input_dim]."""
        return latent_input(z, labels, self.n_labels)

    def generate(self, z_in: torch.Tensor) -> torch.Tensor:  # [N, input_dim] -> [N, C, H, W] in [-1, 1]
        x = z_in.reshape(-1, self.input_dim, 1, 1).to(self.compute_dtype, memory_format=self.memory_format)
        return run_layers(self.run_gen, x)

    def classify(self, images: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, A]
        images = fit_to_classifier(
            images.to(self.compute_dtype), self.class_chan, self.class_size, self.class_size
        )
        return run_layers(self.run_cls, images).flatten(1)

    def forward(self, z_in: torch.Tensor) -> torch.Tensor:  # [N, input_dim] -> logits [N, A], at least fp32
        logits = self.classify(self.generate(z_in))
        # A bf16 network's logits leave it as fp32: the objective and the update run in fp32 whatever the
        # network's precision (EngineConfig.precision); the cast's gradient brings d/dz back to z's dtype.
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the weights (float32, or bfloat16 under EngineConfig.precision="bf16")."""
        return next(self.parameters()).dtype


def fit_to_classifier(images: torch.Tensor, chan: int, height: int, width: int) -> torch.Tensor:
    """Images as a classifier reads them: resized (bilinear) to its size where they differ, and a single
    channel repeated where it takes more. [N, C, H, W] -> [N, chan, height, width]"""
    if images.shape[-2:] != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear")
    if images.shape[1] != chan:
        images = images.expand(-1, chan, -1, -1)
    return images
