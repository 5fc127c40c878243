"""What makes two runs the same job: job.json's "identity", and the differences that refuse a resume."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

from zsteer.core.errors import quoted_json
from zsteer.pipeline.checkpoints import LoadedModel
from zsteer.pipeline.config import EngineConfig

from .manifest import ManifestPlan
from .method import EditMethod


def zsteer_version() -> str:
    try:
        return version("zsteer")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _model(model: LoadedModel) -> dict:
    doc = {"fingerprint": model.fingerprint, "spec": model.spec.to_dict()}
    if model.attributes:
        doc["attributes"] = list(model.attributes)
    return doc


def job_identity(
    plan: ManifestPlan,
    generator: LoadedModel,
    classifier: LoadedModel,
    targets: list[tuple[str, float]],
    preserve: list[str] | None,
    method: EditMethod,
    images: str,
    unit_rows: int,
) -> dict:
    """Everything the job's results depend on, and how its work is cut into units, as JSON-able data."""
    return {
        "zsteer_version": zsteer_version(),
        # Keyed by path, so a difference names the file; order is the job's file order. The mtime and
        # the footer's hash tell a file written again (same size, same rows) from the one the job read.
        "inputs": {
            str(f.path): {
                "bytes": f.size,
                "rows": f.num_rows,
                "row_groups": len(f.row_groups),
                "mtime_ns": f.mtime_ns,
                "footer_blake2b": f.footer_hash,
            }
            for f in plan.files
        },
        # The carried columns and their unified types (manifest.unify_schemas): every shard of the job
        # has this schema, so a resume that would write another one is refused.
        "columns": [[f.name, str(f.type)] for f in plan.carried],
        # Unit keys in commits/ name chunks of unit_rows rows: another value would name other rows.
        "unit_rows": unit_rows,
        "generator": _model(generator),
        "classifier": _model(classifier),
        "targets": [[name, weight] for name, weight in targets],
        "preserve": preserve,
        # The method by name and the settings its results depend on (ascent: {"ascent": {...}}).
        "method": method.name,
        **method.identity(),
        "images": images,
    }


def _flatten(doc, prefix: str = "") -> dict[str, object]:
    if isinstance(doc, dict):
        out: dict[str, object] = {}
        for key, value in doc.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: doc}


# Identity fields added after jobs were already being written, whose value an older job.json lacks but
# had all the same: "columns" (the unified carried schema) is what every file shared, since a job whose
# files' schemas differed was refused before. A job.json without them resumes.
LATER_FIELDS = ("columns",)


# Identity fields recorded only when they are not the default (the runner writes "precision" for bf16
# alone, so that jobs written before it resume): absent means this value, in a comparison and in the
# message that names a difference ('precision: "fp32" -> "bf16"', not 'null -> "bf16"').
DEFAULT_FIELDS = {"precision": EngineConfig().precision}


def differences(old: dict, new: dict) -> list[str]:
    """'field: old -> new' for each leaf that differs (lists compare whole); a LATER_FIELDS field that
    ``old`` lacks is not compared, and a DEFAULT_FIELDS field that either lacks is its default."""
    a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
    a, b = DEFAULT_FIELDS | a, DEFAULT_FIELDS | b
    return [
        f"{key}: {quoted_json(a.get(key))} -> {quoted_json(b.get(key))}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and not (key in LATER_FIELDS and key not in a)
    ]
