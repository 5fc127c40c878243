"""onnxruntime for imported models (.pt2): forward-only editors for any graph, ascent for the graphs the
hand-written input-gradient covers.

- Forward-only (``ascent.steps == 0``: the renderer that direction and interpolation edits use, or an
  ascent with no steps): the generator and the classifier (with zsteer's resize, channel repeat and
  range maps) are exported to ONNX and run by two sessions, whatever the graph holds.
- Ascent: onnxruntime has no autograd, so the step graph needs ``export/vjp.py``'s hand-written
  gradient, which covers sequential stacks of Conv2d, ConvTranspose2d, BatchNorm2d, ReLU, LeakyReLU and
  Tanh (plus a leading reshape of z and a trailing flatten of the logits). An imported graph made only of
  those is rebuilt as such a stack and runs as the course models do; any other is refused in one line
  that names its first unsupported node. There is no silent fallback to torch: `--backend torch` runs
  every graph.

Rows run one call each (``MIN_ROWS`` copies of the row), as in ``pipeline.generic_net.ModelNet``: an
arbitrary graph's bits depend on its batch otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from zsteer.core.errors import ExportError
from zsteer.pipeline.ascent_loop import MIN_ROWS, AscentLoop, StepOut, StepRows
from zsteer.pipeline.config import AscentConfig, EngineConfig
from zsteer.pipeline.editor import to_uint8_images
from zsteer.pipeline.generic_net import ModelNet, classifier_input_shape
from zsteer.pipeline.imported import ImportedClassifier, ImportedGenerator
from zsteer.pipeline.loaded import LoadedModel
from zsteer.pipeline.network import flatten_layers, latent_input

from .graphs import EditVJP
from .graphset import OnnxGraphs
from .onnx_export import export_graphs, to_onnx
from .runtime import Placement, RowChunks, import_onnxruntime, make_sessions

# ATen operators of a graph that export/vjp.py can differentiate, and the layer each becomes.
_STACK_OPS = ("conv2d", "conv_transpose2d", "batch_norm", "relu", "leaky_relu", "tanh")
_SHAPE_OPS = ("view", "reshape", "flatten", "squeeze", "_unsafe_view")


class GeneratorForward(nn.Module):
    """z [N, z_dim] (+ labels [N] int64) -> images [N, C, H, W] in [-1, 1], for torch.onnx.export."""

    def __init__(self, net: ModelNet):
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        z, labels = inputs[0], (inputs[1] if len(inputs) > 1 else None)
        if isinstance(self.net.gen, ImportedGenerator):
            return self.net.gen.draw(z, labels)
        return self.net.gen(latent_input(z, labels, self.net.n_labels))


class ClassifierForward(nn.Module):
    """Generator-sized images [N, C, H, W] in [-1, 1] -> logits [N, A] (resize and range maps included)."""

    def __init__(self, net: ModelNet):
        super().__init__()
        self.net = net

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # (images,): to_onnx's one spec for all
        return self.net._classify(inputs[0])


class OrtForwardEngine(AscentLoop):
    """An Editor that renders with onnxruntime and takes no steps (module docstring)."""

    def __init__(self, generator: LoadedModel, classifier: LoadedModel, engine: EngineConfig, backend):
        self.engine, self.ascent = engine, AscentConfig(steps=0)
        self.batch_size = engine.batch_size
        import_onnxruntime()
        net = ModelNet(generator, classifier)
        self.z_dim, self.n_labels = net.z_dim, net.n_labels
        rows = MIN_ROWS + 1  # torch.export specialises a sample batch of 0 or 1 rows
        args = (torch.zeros(rows, net.z_dim),) + (
            (torch.zeros(rows, dtype=torch.int64),) if net.n_labels else ()
        )
        names = ["z", "labels"][: len(args)]
        with torch.no_grad():
            image = GeneratorForward(net)(*args)
        models = {
            "generator": to_onnx(GeneratorForward(net), args, names, ["images"]).SerializeToString(),
            "classifier": to_onnx(
                ClassifierForward(net), (image,), ["images"], ["logits"]
            ).SerializeToString(),
        }
        placement = Placement.parse(engine.device)
        # On the CPU with several threads, rows run on 1-thread sessions, ``threads`` chunks of rows at a
        # time (runtime.RowChunks, as the course graphs run): a row's bits then cannot depend on the thread
        # count, and the per-row calls of a graph this small gain more from running side by side.
        chunked = placement.device_type == "cpu" and (backend.threads or 0) > 1
        self.sessions, _ = make_sessions(
            models, placement, 1 if chunked else backend.threads, backend.cpu_fallback
        )
        self.chunks = RowChunks(backend.threads if chunked else 1)
        # Tensors go in and out through numpy on the host (forward-only runs are not the hot loop).
        self.device = torch.device("cpu")

    def step_rows(self, rows: StepRows, t: int) -> StepOut:
        raise ExportError(
            "the onnxruntime editor of this imported model renders only (forward-only methods); a row asked "
            "for ascent steps: run it with --backend torch"
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None, images: bool):
        """(images [m, H, W, C] uint8 or None, logits [m, A]), one session call per row (MIN_ROWS copies)."""
        feeds = {"z": z.cpu().numpy()}  # [m, z_dim]
        if self.n_labels:
            feeds["labels"] = labels.cpu().numpy().astype(np.int64)  # [m]
        generated, logits = self.chunks.run(self._rows_alone, feeds, z.shape[0])
        out = torch.from_numpy(logits)
        return (to_uint8_images(torch.from_numpy(generated)) if images else None), out

    def _rows_alone(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """[images [k, C, H, W], logits [k, A]] of some rows, each row one run of MIN_ROWS copies of it."""
        pixels, logits = [], []
        copies = np.zeros(MIN_ROWS, dtype=np.int64)
        for i in range(len(feeds["z"])):
            generated = self.sessions["generator"].run(
                None, {k: v[i : i + 1][copies] for k, v in feeds.items()}
            )[0]
            logits.append(self.sessions["classifier"].run(None, {"images": generated})[0][:1])
            pixels.append(generated[:1])
        return [np.concatenate(pixels), np.concatenate(logits)]


@dataclass
class LayerStacks:
    """What ``graphs.EditVJP`` reads off an ``EditNet``, built from imported graphs instead."""

    z_dim: int
    n_labels: int
    input_dim: int
    class_size: int
    class_chan: int
    gen: list = field(default_factory=list)  # layers z_in [N, input_dim, 1, 1] -> images in [-1, 1]
    cls: list = field(default_factory=list)  # layers images in [-1, 1] -> logits [N, A, 1, 1]


def _node_op(node) -> str:
    return (
        node.target.name().split("::")[-1].split(".")[0] if hasattr(node.target, "name") else str(node.target)
    )


def graph_layers(module: nn.Module, role: str, path: str) -> list[nn.Module]:
    """The graph of an imported module as export/vjp.py layers, or an ExportError naming its first node
    that is not one (or that is not a link of a single chain)."""
    graph = module.graph
    params = dict(module.named_parameters()) | dict(module.named_buffers())
    layers: list[nn.Module] = []
    previous = None
    calls = [n for n in graph.nodes if n.op == "call_function"]
    for index, node in enumerate(calls):
        op = _node_op(node)

        def refuse(why: str, node=node, op=op):
            return ExportError(
                f"{path}: ascent on onnxruntime: {role} node {node.name!r} (aten.{op}) {why}; the hand-written "
                f"gradient covers chains of {', '.join(_STACK_OPS)} (use --backend torch for any graph)"
            )

        source = node.args[0] if node.args else None
        if previous is not None and source is not previous:
            raise refuse("does not continue a single chain of layers")
        if op in _SHAPE_OPS:
            rank = node.meta["val"].dim() if "val" in node.meta else None
            first = index == 0 and role == "generator" and rank == 4
            last = index == len(calls) - 1 and role == "classifier" and rank == 2
            if not (first or last):
                raise refuse("reshapes inside the stack")
            previous = node
            continue
        if op not in _STACK_OPS:
            raise refuse("has no hand-written input-gradient")
        args = [params[a.target] if getattr(a, "op", None) == "get_attr" else a for a in node.args]
        layers.append(_layer(op, args, node.kwargs, refuse))
        previous = node
    return layers


def _weight(args, i):
    return args[i] if len(args) > i else None


@torch.no_grad()
def _layer(op: str, args: list, kwargs: dict, refuse) -> nn.Module:
    if op in ("relu",):
        return nn.ReLU()
    if op == "tanh":
        return nn.Tanh()
    if op == "leaky_relu":
        return nn.LeakyReLU(float(args[1]) if len(args) > 1 else 0.01)
    if op == "batch_norm":
        weight, bias, mean, var, training, _, eps = args[1:8]
        if training:
            raise refuse("normalises with batch statistics")
        layer = nn.BatchNorm2d(mean.shape[0], eps=float(eps), affine=weight is not None)
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
        if weight is not None:
            layer.weight.copy_(weight)
            layer.bias.copy_(bias if bias is not None else torch.zeros_like(weight))
        return layer.eval()
    weight, bias = args[1], _weight(args, 2)
    if op == "conv2d":
        stride, padding, dilation, groups = (list(args[3:7]) + [1, 0, 1, 1][len(args[3:7]) :])[:4]
        layer = nn.Conv2d(
            weight.shape[1] * groups, weight.shape[0], weight.shape[2:], stride, padding, dilation, groups,
            bias=bias is not None,
        )  # fmt: skip
    else:  # conv_transpose2d(input, weight, bias, stride, padding, output_padding, groups, dilation)
        stride, padding, out_pad, groups, dilation = (list(args[3:8]) + [1, 0, 0, 1, 1][len(args[3:8]) :])[:5]
        layer = nn.ConvTranspose2d(
            weight.shape[0], weight.shape[1] * groups, weight.shape[2:], stride, padding, out_pad, groups,
            bias=bias is not None, dilation=dilation,
        )  # fmt: skip
    if isinstance(padding, str):
        raise refuse(f"pads by {padding!r}")
    layer.weight.copy_(weight)
    if bias is not None:
        layer.bias.copy_(bias)
    return layer.eval()


@torch.no_grad()
def _range_map(channels: int, scale: float, shift: float) -> nn.Conv2d:
    """x * scale + shift per pixel, as a 1x1 convolution (a layer the hand-written gradient knows)."""
    conv = nn.Conv2d(channels, channels, 1)
    conv.weight.copy_(torch.eye(channels).reshape(channels, channels, 1, 1) * scale)
    conv.bias.fill_(shift)
    return conv.eval()


def layer_stacks(generator: LoadedModel, classifier: LoadedModel) -> LayerStacks:
    """The pair as export/vjp.py stacks (imported graphs rebuilt, course modules flattened), or one line
    naming the first node the hand-written gradient cannot take."""
    gspec = generator.spec
    if isinstance(generator.module, ImportedGenerator):
        gen = graph_layers(generator.module.program, "generator", generator.path)
        low, high = gspec.output_range
        if (low, high) != (-1.0, 1.0):
            gen.append(_range_map(gspec.im_chan, 2.0 / (high - low), -1.0 - 2.0 * low / (high - low)))
    else:
        gen = flatten_layers(generator.module.gen)
    chan, height, width = classifier_input_shape(classifier)
    if height != width:
        raise ExportError(
            f"{classifier.path}: ascent on onnxruntime needs a square classifier input, not {height}x{width}"
        )
    if isinstance(classifier.module, ImportedClassifier):
        cls = graph_layers(classifier.module.program, "classifier", classifier.path)
        low, high = classifier.spec.input_range
        if (low, high) != (-1.0, 1.0):
            cls.insert(0, _range_map(chan, (high - low) / 2.0, (high + low) / 2.0))
    else:
        cls = flatten_layers(classifier.module.classifier)
    return LayerStacks(gspec.z_dim, gspec.n_classes, gspec.z_dim + gspec.n_classes, height, chan, gen, cls)


def imported_step_graphs(
    generator: LoadedModel, classifier: LoadedModel, ascent: AscentConfig, backend
) -> OnnxGraphs:
    """The ONNX graphs of an ascent on an imported pair, or one line saying why there are none."""
    if backend.onnx_dir is not None:
        raise ExportError(
            "--onnx-dir holds graphs of course models; imported models are exported in memory (leave it out)"
        )
    stacks = layer_stacks(generator, classifier)
    try:
        vjp = EditVJP(stacks)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{generator.path} + {classifier.path}: ascent on onnxruntime: {exc}") from None
    return export_graphs(vjp, (ascent.lab_compat,), attributes=classifier.attributes)
