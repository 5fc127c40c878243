"""Reading and writing ``torch.export`` programs (``.pt2``) so that loading one runs no code from the file.

What ``torch.export.load`` does with a file (torch 2.13, torch/export/pt2_archive/_package.py and
torch/_export/serde/serialize.py), and what is refused here before it is called (docs/NOTES.md,
"Imported models: what loading a .pt2 can run"):

- the graph is JSON (``models/<name>.json``) and the weights are raw tensor records described by JSON
  (``data/weights/*_config.json``): data, read as data;
- a weight or constant marked ``use_pickle`` (tensor subclasses) is read with
  ``torch.load(weights_only=False)``, a custom object with torchbind's unpickler, an "opaque" object
  with ``pickle.loads``, and legacy ``.pt`` weight files with ``torch.load`` as well: any of them can run
  code, so a file holding one is refused;
- AOTInductor entries (``data/aotinductor/``) are shared libraries that ``load_pt2`` loads: refused;
- the sample inputs (``data/sample_inputs/*.pt``) are a pickle that torch reads with
  ``weights_only=True`` and, if that fails, again with ``weights_only=False``: they are read here with
  ``weights_only=True`` first and the file is refused if that fails, so torch's fallback never runs;
- symbolic sizes (``expr_str`` fields, range constraint names) go through ``sympy.sympify``, which
  evaluates Python: each must be an arithmetic expression over size symbols and integers;
- ``guards_code`` strings are compiled with ``exec`` by ``ExportedProgram.module()``: the module is
  built with ``check_guards=False`` (no exec) and the strings are held to the same arithmetic grammar;
- node targets are resolved by name from ``torch``, ``operator`` and ``math``: only ATen operators (and
  ``operator.getitem``) are accepted, without ``aten.from_file`` / ``aten._print`` (files, stdout), and
  no sub-graphs (higher-order operators) or custom objects.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from zsteer.core.errors import CheckpointError, first_line

# Entries a plain torch.export.save archive holds (after the archive's root folder).
_ALLOWED_ENTRY = re.compile(
    r"^(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[A-Za-z0-9_]+\.json|data/weights/[A-Za-z0-9_]+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/[A-Za-z0-9_]+_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/[A-Za-z0-9_]+\.pt|extra/[A-Za-z0-9_.-]+)$"
)
_OP_TARGET = re.compile(r"^torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
_OTHER_TARGETS = {"_operator.getitem"}
_REFUSED_OPS = {"from_file", "_print"}  # ATen operators that read files or write to stdout
# Argument kinds that carry code or objects rather than tensors and numbers.
_REFUSED_ARGS = {"as_graph", "as_custom_obj", "as_operator", "as_complex"}
# Symbolic size expressions, as torch writes them ("Symbol('s17', positive=True, integer=True)", "2*s0"):
# quoted size-symbol names, integers, arithmetic and comparisons, keyword flags, and the few names sympy
# and torch's deserializer use. No other strings, no brackets, no attributes.
_EXPR_SYMBOL = re.compile(r"'[a-z]\d+'")
_EXPR_CHARS = re.compile(r"^[A-Za-z0-9_+\-*/%(), <>=!]*$")
_EXPR_NAMES = re.compile(r"^([a-z]\d+|Symbol|Integer|Rational|Add|Mul|Pow|positive|integer|nonnegative|"
                         r"negative|real|finite|FloorDiv|ModularIndexing|Where|PythonMod|Mod|CleanDiv|"
                         r"CeilToInt|FloorToInt|IntTrueDiv|Max|Min|Eq|Ne|Le|Lt|Ge|Gt|And|Or|Not|oo|"
                         r"True|False|Abs)$")  # fmt: skip
# guards_code: L['name'].size()[k] compared with integers or other sizes.
_GUARD = re.compile(r"^[\sA-Za-z0-9_+\-*/%()<>=!]*$")
_GUARD_ACCESS = re.compile(r"L\['[A-Za-z_][A-Za-z0-9_]*'\]\.size\(\)\[\d+\]")


def check_program_file(path: Path) -> None:
    """Refuse, in one line, a ``.pt2`` file whose loading could run code from it (module docstring)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a torch.export program (.pt2 zip archive): {exc}") from None
    with archive:
        names = archive.namelist()
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or not all("/" in name for name in names):
            raise CheckpointError(f"{path}: not a torch.export program (expected one root folder)")
        inner = {name.split("/", 1)[1]: name for name in names if not name.endswith("/")}
        for entry in inner:
            if not _ALLOWED_ENTRY.match(entry):
                raise CheckpointError(
                    f"{path}: refused: entry {entry!r} is not part of a plain torch.export program "
                    "(pickled objects, compiled libraries and legacy formats can run code on load)"
                )
        models = [e for e in inner if e.startswith("models/")]
        if models != ["models/model.json"]:
            raise CheckpointError(f"{path}: expected one program, models/model.json; found {models}")
        for entry in inner:
            if entry.endswith("_config.json"):
                _check_payload_config(path, entry, _read_json(archive, inner[entry], path))
        graph = _read_json(archive, inner["models/model.json"], path)
        _check_graph_json(path, graph)
        for entry in inner:
            if entry.startswith("data/sample_inputs/"):
                _check_sample_inputs(path, archive.read(inner[entry]))


def _read_json(archive: zipfile.ZipFile, name: str, path: Path):
    try:
        return json.loads(archive.read(name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: {name} is not valid JSON ({exc})") from None


def _check_payload_config(path: Path, entry: str, config) -> None:
    items = config.get("config") if isinstance(config, dict) else None
    if not isinstance(items, dict):
        raise CheckpointError(f"{path}: {entry} is not a payload config")
    for fqn, meta in items.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise CheckpointError(
                f"{path}: refused: {fqn!r} is stored as a pickle (torch.export.load would unpickle it, "
                "which can run code); export plain tensors"
            )
        prefix = "weight_" if "/weights/" in f"/{entry}" else "tensor_"
        name = meta.get("path_name")
        if not isinstance(name, str) or not re.fullmatch(prefix + r"\d+", name):
            raise CheckpointError(f"{path}: refused: {fqn!r} is stored as {name!r}, not a raw tensor record")


def _check_expr(path: Path, text) -> None:
    rest = _EXPR_SYMBOL.sub("0", text) if isinstance(text, str) else None
    if rest is None or not _EXPR_CHARS.match(rest):
        raise CheckpointError(f"{path}: refused: symbolic size {text!r} is not an arithmetic expression")
    for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest):
        if not _EXPR_NAMES.match(word):
            raise CheckpointError(f"{path}: refused: symbolic size {text!r} names {word!r}")


def _check_guard(path: Path, text) -> None:
    rest = _GUARD_ACCESS.sub("0", text) if isinstance(text, str) else None
    if rest is None or not _GUARD.match(rest) or re.search(r"[A-Za-z_]", rest):
        raise CheckpointError(f"{path}: refused: guard {text!r} is not a comparison of input sizes")


def _check_graph_json(path: Path, program) -> None:
    """Every node an ATen operator, every symbolic size arithmetic, no sub-graphs or objects."""
    if not isinstance(program, dict) or "graph_module" not in program:
        raise CheckpointError(f"{path}: models/model.json is not a serialized ExportedProgram")
    for guard in program.get("guards_code") or []:
        _check_guard(path, guard)
    for name in program.get("range_constraints") or {}:
        _check_expr(path, name)

    def walk(value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in _REFUSED_ARGS:
                    raise CheckpointError(
                        f"{path}: refused: the program holds a {key[3:]} argument (sub-graphs, operators "
                        "and objects are not accepted; export a plain graph of ATen operators)"
                    )
                if key == "expr_str":
                    _check_expr(path, item)
                elif key == "target" and "inputs" in value:
                    _check_target(path, item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(program["graph_module"])


def _check_target(path: Path, target) -> None:
    if isinstance(target, str) and target in _OTHER_TARGETS:
        return
    if not isinstance(target, str) or not _OP_TARGET.match(target):
        raise CheckpointError(f"{path}: refused: node target {target!r} is not an ATen operator")
    if target.split(".")[3] in _REFUSED_OPS:
        raise CheckpointError(f"{path}: refused: operator {target} reads or writes outside the graph")


def _check_sample_inputs(path: Path, data: bytes) -> None:
    """torch reads these with weights_only=True and falls back to a full unpickle: make sure it need not."""
    if not data:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # the safe unpickler refuses any global it does not know
        first = first_line(exc, limit=200)
        raise CheckpointError(
            f"{path}: refused: its sample inputs are not plain tensors ({first}); torch would unpickle them"
        ) from None


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """The ExportedProgram in ``path``, after ``check_program_file``; a one-line error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    check_program_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path))
    except Exception as exc:  # the deserializer raises many types; the user needs one line
        first = first_line(exc, limit=200)
        raise CheckpointError(f"{path}: not a loadable torch.export program ({first})") from None


def program_module(program: torch.export.ExportedProgram) -> nn.Module:
    """The program as a frozen module (no guard code is exec'd: ``check_guards=False``)."""
    module = program.module(check_guards=False)
    # No eval(): an exported graph has its train/eval behaviour baked in (zsteer import exports eval mode).
    for p in module.parameters():
        p.requires_grad_(False)
    return module
