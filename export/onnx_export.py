"""Exporting the generator, the classifier and the ascent step to ONNX, with a manifest and a parity gate.

``export_models(generator, classifier, out_dir)`` writes::

    out_dir/generator.onnx    z [N, z_dim] (+ labels [N] int64) -> images [N, C, H, W] in [-1, 1]
    out_dir/classifier.onnx   images [N, C, H, W] (generator-sized) -> logits [N, A]
    out_dir/step.onnx         one clean-mode ascent step (graphs.AscentStepGraph)
    out_dir/step_lab.onnx     one lab-compatible ascent step
    out_dir/manifest.json     inputs, outputs, attribute names, specs, fingerprints, each graph file's
                              sha256 (checked on load), parity report
    out_dir/parity.json       the parity report alone (written also when the export fails)

BatchNorm is folded, the batch axis is dynamic ("N"), and nothing is written but parity.json unless
onnxruntime matches PyTorch (``parity.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import warnings
from pathlib import Path

import torch

from zsteer.core.errors import ExportError, first_line
from zsteer.core.status import STATUS_NAMES
from zsteer.pipeline.checkpoints import LoadedModel

from .graphs import AscentStepGraph, ClassifierGraph, EditVJP, GeneratorGraph, build_edit_vjp
from .graphset import OnnxGraphs
from .parity import check_parity
from .runtime import import_onnx, import_onnxscript
from .small_convs import MAX_OUT_PIXELS, rewrite_small_convs
from .transposed_convs import MAX_GEMM_PIXELS, MAX_OUT_CHANNELS, rewrite_transposed_convs

EXPORTERS = ("dynamo", "torchscript")
MANIFEST = "manifest.json"
FORMAT = "zsteer-onnx"
FORMAT_VERSION = 1
# Rows in the sample inputs: torch.export specialises a dimension whose sample size is 0 or 1.
_SAMPLE_ROWS = 3


def to_onnx(
    module: torch.nn.Module,
    args: tuple,
    input_names,
    output_names,
    exporter: str = "dynamo",
    rewrite: bool = True,
):
    """``module(*args)`` exported to an onnx.ModelProto with a dynamic batch axis "N" on every non-scalar,
    its (transposed) convolutions that onnxruntime runs slowly rewritten (``transposed_convs.py``,
    ``small_convs.py``; ``rewrite=False`` leaves them as exported, for benchmarks/onnx_step.py).

    ``module.forward`` takes ``*inputs`` (the graphs in graphs.py do), so one dynamic-shape spec fits all.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    onnx = import_onnx()
    if exporter == "dynamo":
        import_onnxscript()
    module = module.eval()
    quiet = io.StringIO()
    # The exporters print progress, log about optional torchvision ops and warn about deprecations and
    # unused axis names: keep a job's log clean (failures still raise).
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            if exporter == "dynamo":
                batch = torch.export.Dim("N")
                dynamic = (tuple({0: batch} if a.dim() > 0 else None for a in args),)
                program = torch.onnx.export(
                    module, args, dynamo=True, input_names=list(input_names), output_names=list(output_names),
                    dynamic_shapes=dynamic, verbose=False,
                )  # fmt: skip
                proto = program.model_proto
            else:
                buf = io.BytesIO()
                axes = {n: {0: "N"} for n, a in zip(input_names, args, strict=True) if a.dim() > 0}
                axes.update({n: {0: "N"} for n in output_names})
                torch.onnx.export(
                    module, args, buf, dynamo=False, input_names=list(input_names),
                    output_names=list(output_names), dynamic_axes=axes, opset_version=18,
                )  # fmt: skip
                proto = onnx.load_from_string(buf.getvalue())
        except ExportError:
            raise
        except Exception as exc:  # the exporters raise many types; the user needs one line
            raise ExportError(
                f"torch.onnx.export ({exporter}) failed for {type(module).__name__}: {first_line(exc)}"
            ) from exc
        finally:
            logger.setLevel(level)
    if rewrite:
        proto = rewrite_convs(proto)
    onnx.checker.check_model(proto)
    return proto


def rewrite_convs(
    proto,
    max_out_channels: int = MAX_OUT_CHANNELS,
    max_gemm_pixels: int = MAX_GEMM_PIXELS,
    max_out_pixels: int = MAX_OUT_PIXELS,
):
    """``proto`` with the convolutions onnxruntime's CPU runs slowly rewritten: ConvTranspose on small inputs
    or with few output channels (export/transposed_convs.py), Conv on small outputs (export/small_convs.py).
    The limits are those modules' own; benchmarks/onnx_step.py varies them."""
    proto = rewrite_transposed_convs(proto, max_out_channels, max_gemm_pixels)
    return rewrite_small_convs(proto, max_out_pixels)


def _sample_step_inputs(step: AscentStepGraph, rows: int = _SAMPLE_ROWS) -> tuple:
    vjp = step.vjp
    a = vjp.n_logits
    values = {
        "z": torch.randn(rows, vjp.z_dim), "z0": torch.randn(rows, vjp.z_dim),
        "labels": torch.zeros(rows, dtype=torch.int64), "logits0": torch.zeros(rows, a),
        "weights": torch.ones(rows, a), "preserve": torch.zeros(rows, a),
        "stop_prob": torch.full((rows,), math.nan), "status": torch.zeros(rows, dtype=torch.int32),
        "max_steps": torch.ones(rows, dtype=torch.int32), "steps_taken": torch.zeros(rows, dtype=torch.int32),
        "accum": torch.zeros(rows, vjp.z_dim), "t": torch.tensor(0, dtype=torch.int32),
        "lr": torch.tensor(0.1), "penalty": torch.tensor(0.1), "max_shift": torch.tensor(math.inf),
        "normalize": torch.tensor(False), "lab_scale": torch.tensor(1.0),
    }  # fmt: skip
    return tuple(values[name] for name in step.input_names)


def generator_io(vjp: EditVJP) -> tuple[list[str], list[str]]:
    """Input and output names of the generator graph."""
    return (["z", "labels"] if vjp.n_labels else ["z"]), ["images"]


def export_graphs(
    vjp: EditVJP, steps: tuple[bool, ...] = (False, True), exporter: str = "dynamo", attributes=()
) -> OnnxGraphs:
    """Export the generator, the classifier and the requested step variants (lab_compat flags) to bytes."""
    rows = _SAMPLE_ROWS
    gen_in, gen_out = generator_io(vjp)
    gen_args = (torch.randn(rows, vjp.z_dim),) + (
        (torch.zeros(rows, dtype=torch.int64),) if vjp.n_labels else ()
    )
    generator = to_onnx(GeneratorGraph(vjp), gen_args, gen_in, gen_out, exporter)
    classifier = to_onnx(
        ClassifierGraph(vjp), (torch.zeros(rows, *vjp.image_shape),), ["images"], ["logits"], exporter
    )
    step_models = {}
    for lab in steps:
        graph = AscentStepGraph(vjp, lab_compat=lab)
        proto = to_onnx(graph, _sample_step_inputs(graph), graph.input_names, graph.output_names, exporter)
        step_models[lab] = proto.SerializeToString()
    return OnnxGraphs(
        generator=generator.SerializeToString(), classifier=classifier.SerializeToString(), steps=step_models,
        z_dim=vjp.z_dim, n_labels=vjp.n_labels, n_attributes=vjp.n_logits, image_shape=vjp.image_shape,
        attributes=tuple(attributes),
    )  # fmt: skip


def _graph_io(model: bytes) -> dict:
    """{"inputs": [...], "outputs": [...]} with name, dtype and shape ("N" for the batch axis) of each."""
    onnx = import_onnx()
    proto = onnx.load_from_string(model)

    def describe(values):
        out = []
        for v in values:
            tensor = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            out.append({"name": v.name, "dtype": dtype, "shape": dims})
        return out

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"inputs": describe(proto.graph.input), "outputs": describe(proto.graph.output), "opset": opset}


STEP_FILES = {False: "step.onnx", True: "step_lab.onnx"}


def file_sha256(data: bytes) -> str:
    """The hex sha256 of a graph file's bytes, as the manifest records it."""
    return hashlib.sha256(data).hexdigest()


def build_manifest(
    graphs: OnnxGraphs, generator: LoadedModel, classifier: LoadedModel, exporter: str
) -> dict:
    """The manifest that describes an export folder (without the parity report)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        zsteer_version = version("zsteer")
    except PackageNotFoundError:
        zsteer_version = "unknown"
    steps = {}
    for lab, model in graphs.steps.items():
        steps["lab" if lab else "clean"] = {
            "file": STEP_FILES[lab], "lab_compat": lab, "sha256": file_sha256(model), **_graph_io(model)
        }  # fmt: skip
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "zsteer_version": zsteer_version,
        "torch_version": torch.__version__,
        "exporter": exporter,
        "batch_axis": "N",
        "batchnorm_folded": True,
        "z_dim": graphs.z_dim,
        "n_labels": graphs.n_labels,
        "n_attributes": graphs.n_attributes,
        "image_shape": list(graphs.image_shape),
        "attributes": list(classifier.attributes),
        "status_codes": _stop_codes(),
        "generator": {
            "file": "generator.onnx", "spec": generator.spec.to_dict(), "fingerprint": generator.fingerprint,
            "source": generator.path, "sha256": file_sha256(graphs.generator), **_graph_io(graphs.generator),
        },
        "classifier": {
            "file": "classifier.onnx", "spec": classifier.spec.to_dict(), "fingerprint": classifier.fingerprint,
            "source": classifier.path, "sha256": file_sha256(graphs.classifier), **_graph_io(graphs.classifier),
        },
        "steps": steps,
    }  # fmt: skip


def export_models(
    generator: LoadedModel,
    classifier: LoadedModel,
    out_dir: str | Path,
    *,
    steps: tuple[bool, ...] = (False, True),
    batch_sizes: tuple[int, ...] = (1, 7, 128),
    exporter: str = "dynamo",
    atol: float = 1e-5,
    step_rtol: float = 1e-4,
    seed: int = 0,
) -> dict:
    """Export both models (and the step graphs), check them against PyTorch, write them; the parity report.

    Raises ExportError (one line) for an unsupported layer, a failed export, or a parity failure: images
    and logits must agree within ``atol`` (times the output's magnitude where that exceeds 1) and the step's
    update within ``step_rtol`` relative, at every batch size in ``batch_sizes``.
    """
    out_dir = Path(out_dir)
    net, vjp = build_edit_vjp(generator, classifier)
    graphs = export_graphs(vjp, steps, exporter, classifier.attributes)
    report = check_parity(
        generator, classifier, vjp, graphs, batch_sizes=batch_sizes, atol=atol, step_rtol=step_rtol, seed=seed
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "parity.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not report["passed"]:
        raise ExportError(
            f"ONNX export does not match PyTorch: {report['failure']} (details: {out_dir / 'parity.json'})"
        )
    (out_dir / "generator.onnx").write_bytes(graphs.generator)
    (out_dir / "classifier.onnx").write_bytes(graphs.classifier)
    for lab, model in graphs.steps.items():
        (out_dir / STEP_FILES[lab]).write_bytes(model)
    manifest = build_manifest(graphs, generator, classifier, exporter)
    manifest["parity"] = report
    # The manifest last: a folder with a manifest is a complete, checked export.
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return report


def _check_parses(file: Path, data: bytes) -> None:
    """Refuse a graph file that is not an ONNX model, where no hash was recorded to check it by (a folder
    exported before hashes were kept): a protobuf parse finds most truncations in milliseconds, before a
    job starts; one cut at a field boundary still fails at session creation (runtime.make_session)."""
    from google.protobuf.message import DecodeError  # protobuf: a dependency of onnx

    model = import_onnx().ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError:
        raise ExportError(f"{file}: not a valid ONNX file (truncated?)") from None
    if not model.graph.node:
        raise ExportError(f"{file}: not a valid ONNX file (no graph in it; truncated?)")


def check_export_folder(export_dir: str | Path) -> None:
    """Check an export folder's manifest and graph files (hashes, or a parse where none are recorded)
    without making sessions: what a command runs before it starts a job or a benchmark on the folder."""
    load_graphs(export_dir)


def _stop_codes() -> dict[str, str]:
    """{code: stop reason} as the exported step graph writes them (manifest.json, JSON keys)."""
    return {str(code): name for code, name in STATUS_NAMES.items()}


def load_graphs(export_dir: str | Path) -> OnnxGraphs:
    """The graphs of a folder written by ``export_models`` (its manifest says what is there)."""
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST
    if not path.is_file():
        raise ExportError(f"{export_dir}: no {MANIFEST} (not a finished zsteer ONNX export)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    if manifest.get("status_codes") != _stop_codes():
        # Its step graph is the update as it was then: one exported before out_of_range would let rows
        # step past MAX_ABS_Z, which this version's torch engine stops.
        raise ExportError(
            f"{path}: exported by another zsteer, whose step graph writes other stop reasons "
            f"({', '.join(sorted((manifest.get('status_codes') or {}).values()))}); re-export the folder"
        )

    def read(entry: dict) -> bytes:
        file = export_dir / entry["file"]
        if not file.is_file():
            raise ExportError(f"{file}: missing (named in {MANIFEST})")
        data = file.read_bytes()
        # The model fingerprints say which models were exported; the hash says these are the bytes that
        # export wrote (a graph file copied in from another export of the same shapes runs silently
        # otherwise). A folder exported before hashes were recorded has none: its files are parsed instead.
        expected = entry.get("sha256")
        if expected is None:
            _check_parses(file, data)
        elif file_sha256(data) != expected:
            raise ExportError(
                f"{file}: its sha256 is not the one {MANIFEST} records (changed, truncated or copied in "
                "from another export; re-export the folder)"
            )
        return data

    try:  # a hand-edited or damaged manifest: one line, not a KeyError from deep in here
        return _graphs_of(export_dir, manifest, read)
    except KeyError as exc:
        raise ExportError(f"{path}: malformed manifest: no field {exc} (re-export the folder)") from None
    except (TypeError, AttributeError, ValueError) as exc:
        raise ExportError(f"{path}: malformed manifest ({first_line(exc)}; re-export the folder)") from None


def _graphs_of(export_dir: Path, manifest: dict, read) -> OnnxGraphs:
    """``load_graphs``' OnnxGraphs from a manifest's fields (``read`` reads and checks one file entry)."""
    steps = {entry["lab_compat"]: entry for entry in manifest["steps"].values()}
    return OnnxGraphs(
        generator=read(manifest["generator"]),
        classifier=read(manifest["classifier"]),
        steps={lab: read(entry) for lab, entry in steps.items()},
        z_dim=manifest["z_dim"],
        n_labels=manifest["n_labels"],
        n_attributes=manifest["n_attributes"],
        image_shape=tuple(manifest["image_shape"]),
        attributes=tuple(manifest["attributes"]),
        files={
            "generator": str(export_dir / manifest["generator"]["file"]),
            "classifier": str(export_dir / manifest["classifier"]["file"]),
            **{lab: str(export_dir / entry["file"]) for lab, entry in steps.items()},
        },
        manifest=manifest,
    )
