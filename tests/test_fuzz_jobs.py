"""Property-based fuzzing of whole jobs (issue 14, part 5): hypothesis builds manifests, the job runs.

Each example is one to three Parquet files of random row counts, row-group sizes and layouts (z as
fixed or variable lists of float32/float64, ids of any integer width or strings, override and carried
columns in some files only, of other types, dictionary-encoded or of type null), holding a random mix of
valid rows and faulty ones: NaN/Inf, values beyond float32 or beyond MAX_ABS_Z, wrong z lengths, null
z / null values / null ids, text that is not UTF-8 (ids, carried strings), duplicate ids within and
across files, bad labels, bad per-row `targets` / `steps` / `stop_at_prob`, and now and then a bit
flipped in a column chunk. Job settings (units, batches, reads, shards, steps, stop probability, max
shift, penalty, preserve, with or without a job-wide target) are random as well. For each example:

- the job completes without an exception (no traceback: faults are rejects, not crashes);
- every input row is exactly once in parts/ or rejects/, and a row is rejected exactly when the
  example made it faulty (the oracle below knows why each row was written as it was);
- a run that crashes at a random point (a commit marker, a shard, the duplicate index, the summary) and
  is then resumed, with other batch / read / shard sizes, ends with the same parts and rejects as an
  uninterrupted run, bit for bit; so does `zsteer edit` killed by SIGKILL (fewer examples: a process
  each).

Whole-file faults are fuzzed too: one line naming the file, nothing written. Bugs the fuzzers found are
kept as plain tests below ("what the fuzzers found").

Profiles (tests/conftest.py): "ci", the default, runs a CI-sized, derandomized number of examples;
``pytest tests/test_fuzz_jobs.py --hypothesis-profile long`` runs many more, with fresh randomness and a
database of failing examples, for local runs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jobkit import ATTRS, TINY_GENERATOR, Z_DIM, job_config, latents, read_parts, read_rejects, tiny_models

from zsteer.core.errors import ZsteerError
from zsteer.jobs import duplicates as duplicates_module
from zsteer.jobs import folder as folder_module
from zsteer.jobs import reader
from zsteer.jobs import runner as runner_module
from zsteer.jobs import storage as storage_module
from zsteer.jobs.manifest import MAX_ROW_STEPS
from zsteer.jobs.rows import MAX_ABS_Z
from zsteer.jobs.runner import run_job
from zsteer.pipeline.models import GeneratorSpec

pytestmark = pytest.mark.usefixtures("single_thread")
ZSTEER = str(Path(sys.executable).with_name("zsteer"))

N_LABELS = 3
KEY = "key"  # a carried column: each input row's serial number, how parts rows are traced to inputs

Z_TYPES = {
    "fixed32": pa.list_(pa.float32(), Z_DIM),
    "list32": pa.list_(pa.float32()),
    "list64": pa.list_(pa.float64()),
    "large64": pa.large_list(pa.float64()),
}
TARGET_TYPES = {
    "json": pa.string(),
    "map": pa.map_(pa.string(), pa.float64()),
    "structs": pa.list_(pa.struct([("name", pa.string()), ("weight", pa.float64())])),
}
# Per-row targets, by column kind: usable values and values every row is rejected for.
GOOD_TARGETS = {
    "json": ['{"attr2": 1}', '{"attr0": -1, "attr3": 0.5}'],
    "map": [[("attr2", 1.0)], [("attr0", -1.0), ("attr3", 0.5)]],
    "structs": [[{"name": "attr2", "weight": 1.0}], [{"name": "attr4", "weight": -2.0}]],
}
BAD_TARGETS = {
    "json": [
        "{",
        "[1, 2]",
        '{"nope": 1}',
        '{"attr1": 0}',
        '{"attr1": "x"}',
        '{"attr1": NaN}',
        "{}",
        '"attr1"',
    ],
    "map": [[("nope", 1.0)], [("attr1", math.nan)], [("attr1", 0.0)], [], [("attr1", math.inf)]],
    "structs": [
        [{"name": "nope", "weight": 1.0}],
        [{"name": "attr1", "weight": math.nan}],
        [{"name": "attr1", "weight": 0.0}],
        [{"name": None, "weight": 1.0}],
        [{"name": "attr1", "weight": None}],
        [None],
        [],
    ],
}
BAD_STEPS = [-1, -(2**31), MAX_ROW_STEPS + 1, 2**31 - 1]  # an int64 column also gets 2**40
BAD_STOP = [0.0, 1.0, 1.5, -0.5, math.inf, -math.inf]
GOOD_STOP = [math.nan, 0.3, 0.9]
# The id types a file may store each kind of id in (_id): files of one job may differ.
ID_TYPES = {
    "small": [pa.int16(), pa.uint16(), pa.int32(), pa.uint32(), pa.int64()],
    "int32_edge": [pa.int32(), pa.int64()],
    "int64_edge": [pa.int64()],
    "string": [pa.string(), pa.large_string()],
}
# Faults a row may be written with; each is applicable to some files only (see _applicable).
FAULTS = (
    "nan", "inf", "huge", "big", "short", "long", "null_z", "null_value", "null_id", "bad_utf8_id",
    "bad_utf8_note", "bad_label", "bad_steps", "bad_stop", "bad_targets",
)  # fmt: skip


@dataclass
class FileSpec:
    """One manifest file of an example, as the oracle knows it."""

    z_kind: str
    id_type: pa.DataType
    row_groups: list[int]  # rows per row group, in order; empty row groups too
    columns: dict[str, list] = field(default_factory=dict)  # column name -> python values
    types: dict[str, pa.DataType] = field(default_factory=dict)
    rejected: list[bool] = field(default_factory=list)  # the oracle's verdict, row by row
    damaged: set[int] = field(default_factory=set)  # keys of the rows of a row group with a flipped bit


@dataclass
class Example:
    files: list[FileSpec]
    conditional: bool
    targets: tuple[str, ...]  # the job's --target (empty: rows bring their own)
    ascent: dict  # AscentConfig settings: steps (1-3), and now and then a stop probability, a max shift
    preserve: tuple[str, ...] | None  # --preserve, or None (every non-target)
    unit_rows: int
    batch_size: int
    read_rows: int
    rows_per_shard: int
    crash: tuple[str, int]  # (what fails, at which call: CRASH_POINTS) in the interrupted run
    resume_speed: tuple[int, int, int]  # batch_size, read_rows, rows_per_shard of the resumed run
    # A bit flipped in one column chunk of a non-empty row group: (file, row group, column, where in
    # the chunk as a fraction, bit), or None.
    flip: tuple[int, int, int, float, int] | None = None


def _applicable(fault: str, spec: FileSpec, conditional: bool) -> bool:
    variable = spec.z_kind != "fixed32"
    return {
        "huge": spec.z_kind in ("list64", "large64"),
        "short": variable,
        "long": variable,
        "bad_label": conditional,
        "bad_utf8_id": pa.types.is_string(spec.id_type) or pa.types.is_large_string(spec.id_type),
        "bad_utf8_note": "note" in spec.columns,
        "bad_steps": "steps" in spec.columns,
        "bad_stop": "stop_at_prob" in spec.columns,
        "bad_targets": "targets" in spec.columns,
    }.get(fault, True)


@st.composite
def examples(draw) -> Example:
    conditional = draw(st.booleans())
    id_kind = draw(st.sampled_from(["small", "int32_edge", "int64_edge", "string"]))
    id_prefix = draw(st.text(max_size=3))  # string ids: any unicode before the serial number
    target_kind = draw(st.sampled_from(sorted(TARGET_TYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_files = draw(st.integers(1, 3))
    files: list[FileSpec] = []
    ids_so_far: list = []  # every id written so far, in job order (files are named in job order)
    serial = 0
    for _ in range(n_files):
        n = draw(st.integers(1, 16))
        spec = FileSpec(
            z_kind=draw(st.sampled_from(sorted(Z_TYPES))),
            id_type=draw(st.sampled_from(ID_TYPES[id_kind])),
            row_groups=draw(_row_groups(n)),
        )
        has = {name: draw(st.booleans()) for name in ("steps", "stop_at_prob", "targets", "note", "tags")}
        for name in ("id", KEY, "z") + (("label",) if conditional else ()):
            spec.columns[name] = []
        for name in ("steps", "stop_at_prob", "targets", "note", "tags"):
            if has[name]:
                spec.columns[name] = []
        spec.types = {
            "id": spec.id_type, KEY: pa.int64(), "z": Z_TYPES[spec.z_kind], "label": draw(st.sampled_from([pa.int8(), pa.uint8(), pa.int32(), pa.int64()])),
            "steps": draw(st.sampled_from([pa.int32(), pa.int64()])),
            "stop_at_prob": draw(st.sampled_from([pa.float32(), pa.float64()])),
            "targets": TARGET_TYPES[target_kind], "note": draw(st.sampled_from([pa.string(), pa.large_string(), pa.dictionary(pa.int8(), pa.string())])),
            "tags": draw(st.sampled_from([pa.list_(pa.int16()), pa.large_list(pa.int64()), pa.list_(pa.int32(), 2)])),
        }  # fmt: skip
        for _ in range(n):
            fault = draw(st.sampled_from(("ok",) * 2 * len(FAULTS) + FAULTS))  # a third of the rows faulty
            if not _applicable(fault, spec, conditional):
                fault = "ok"
            duplicate = bool(ids_so_far) and draw(st.integers(0, 9)) == 0
            z = rng.standard_normal(Z_DIM).tolist()
            if fault in ("nan", "inf", "huge", "big"):
                far = float(rng.choice([-1, 1]) * 4 * MAX_ABS_Z)  # finite, but no latent of N(0, I)
                z[int(rng.integers(Z_DIM))] = {"nan": math.nan, "inf": -math.inf, "huge": 1e39, "big": far}[
                    fault
                ]
            elif fault in ("short", "long"):
                z = z[:-1] if fault == "short" else z + [0.5]
            elif fault == "null_value":
                z[int(rng.integers(Z_DIM))] = None
            row_id = _id(id_kind, id_prefix, serial)
            if duplicate:
                row_id = ids_so_far[int(rng.integers(len(ids_so_far)))]
            if fault == "null_id":
                row_id = None
            elif fault == "bad_utf8_id":
                row_id = b"\xff" + str(serial).encode()  # not UTF-8: the row is rejected
            spec.columns["id"].append(row_id)
            spec.columns[KEY].append(serial)
            spec.columns["z"].append(None if fault == "null_z" else z)
            if conditional:
                spec.columns["label"].append(
                    draw(
                        st.sampled_from(
                            [
                                None,
                                N_LABELS,
                                127,
                                -1 if pa.types.is_signed_integer(spec.types["label"]) else 255,
                            ]
                        )
                    )
                    if fault == "bad_label"
                    else int(rng.integers(N_LABELS))
                )
            own_targets = None
            if "steps" in spec.columns:
                spec.columns["steps"].append(
                    draw(st.sampled_from(BAD_STEPS + ([2**40] if spec.types["steps"] == pa.int64() else [])))
                    if fault == "bad_steps"
                    else draw(st.sampled_from([None, 0, 1, 2]))
                )
            if "stop_at_prob" in spec.columns:
                spec.columns["stop_at_prob"].append(
                    draw(st.sampled_from(BAD_STOP))
                    if fault == "bad_stop"
                    else draw(st.sampled_from([None, *GOOD_STOP]))
                )
            if "targets" in spec.columns:
                pool = (
                    BAD_TARGETS
                    if fault == "bad_targets"
                    else {k: [None, *v] for k, v in GOOD_TARGETS.items()}
                )
                own_targets = draw(st.sampled_from(pool[target_kind]))
                spec.columns["targets"].append(own_targets)
            if "note" in spec.columns:
                note = (
                    b"\xc3(" if fault == "bad_utf8_note" else None if rng.integers(4) == 0 else f"n{serial}"
                )
                spec.columns["note"].append(note)
            if "tags" in spec.columns:  # a carried list column, of another list kind in each file
                spec.columns["tags"].append(
                    None if rng.integers(4) == 0 else [serial % 100, int(rng.integers(100))]
                )
            # The oracle: a faulty row, a later copy of a named id, or a row with no targets at all.
            later_copy = row_id is not None and row_id in ids_so_far
            spec.rejected.append((fault, later_copy, own_targets))  # settled once the job's target is known
            if isinstance(row_id, int | str):
                ids_so_far.append(row_id)
            serial += 1
        for name in ("steps", "stop_at_prob", "targets", "note", "tags"):  # a writer that saw only nulls
            if all(v is None for v in spec.columns.get(name, [0])) and draw(st.booleans()):
                spec.types[name] = pa.null()
        files.append(spec)
    any_targets_column = any(
        "targets" in f.columns and not pa.types.is_null(f.types["targets"]) for f in files
    )
    targets = ("attr1",) if not any_targets_column or draw(st.booleans()) else ()
    for spec in files:
        spec.rejected = [
            fault != "ok" or later or (not targets and own is None) for fault, later, own in spec.rejected
        ]
    unit_rows = draw(st.integers(1, 12))
    n_units = sum(spec_units(f, unit_rows) for f in files)  # markers written; shards are as many or more
    return Example(
        files=files, conditional=conditional, targets=targets,
        ascent={
            "steps": draw(st.integers(1, 3)), "penalty": draw(st.sampled_from([0.1, 0.0, 1.0])),
            "stop_at_prob": draw(st.sampled_from([None, 0.5, 0.9])), "max_shift": draw(st.sampled_from([None, 0.3])),
        },
        preserve=draw(st.none() | st.lists(st.sampled_from(ATTRS), min_size=1, max_size=3, unique=True).map(tuple)),
        unit_rows=unit_rows, batch_size=draw(st.integers(1, 6)), read_rows=draw(st.integers(1, 8)),
        rows_per_shard=draw(st.integers(1, 8)),
        crash=(draw(st.sampled_from(list(CRASH_POINTS))), draw(st.integers(1, n_units))),
        resume_speed=(draw(st.integers(1, 6)), draw(st.integers(1, 8)), draw(st.integers(1, 8))),
        flip=draw(st.tuples(
            st.integers(0, len(files) - 1), st.integers(0, 99), st.integers(0, 99), st.floats(0, 1, exclude_max=True),
            st.integers(0, 7),
        )) if draw(st.integers(0, 3)) == 3 else None,
    )  # fmt: skip


def spec_units(spec: FileSpec, unit_rows: int) -> int:
    """Units of a file: its row groups cut into chunks of unit_rows rows."""
    return sum(-(-g // unit_rows) for g in spec.row_groups)


@st.composite
def _row_groups(draw, n: int) -> list[int]:
    """n rows cut into row groups of random sizes, now and then with empty row groups among them."""
    sizes, left = [], n
    while left:
        sizes.append(draw(st.integers(1, left)))
        left -= sizes[-1]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        sizes.insert(draw(st.integers(0, len(sizes))), 0)
    return sizes


def _id(kind: str, prefix: str, serial: int):
    """The id of row ``serial``: unique; small ints, ints at either end of int32 / int64, or strings."""
    if kind == "string":
        return f"{prefix}{serial}"
    if kind == "small":
        return 10 * serial + 7
    bits = 32 if kind == "int32_edge" else 64
    half = serial // 2
    return -(2 ** (bits - 1)) + half if serial % 2 == 0 else 2 ** (bits - 1) - 1 - half


def _write(example: Example, data: Path) -> list[Path]:
    data.mkdir(parents=True)
    paths = []
    for i, spec in enumerate(example.files):
        columns = {}
        for name, values in spec.columns.items():
            columns[name] = _array(values, spec.types[name])
        table, path, start = pa.table(columns), data / f"f{i}.parquet", 0
        with pq.ParquetWriter(path, table.schema, write_page_checksum=True) as writer:
            for size in spec.row_groups:
                writer.write_table(table.slice(start, size), row_group_size=max(size, 1))
                start += size
        if example.flip is not None and example.flip[0] == i:
            _flip_bit(path, spec, example.flip[1:])
        paths.append(path)
    return paths


def _array(values: list, t: pa.DataType) -> pa.Array:
    """``values`` as an Arrow array of type ``t``; text may hold bytes that are not UTF-8 (kept as they are)."""
    if pa.types.is_dictionary(t):
        return _array(values, t.value_type).dictionary_encode()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        raw = pa.large_binary() if pa.types.is_large_string(t) else pa.binary()
        return pa.array([v.encode() if isinstance(v, str) else v for v in values], raw).view(t)
    return pa.array(values, t)


def _flip_bit(path: Path, spec: FileSpec, flip: tuple[int, int, float, int]) -> None:
    """Flip one bit of one column chunk of a non-empty row group (pages, headers: not the footer)."""
    meta = pq.ParquetFile(path).metadata
    groups = [g for g in range(meta.num_row_groups) if meta.row_group(g).num_rows]
    group = groups[flip[0] % len(groups)]
    chunk = meta.row_group(group).column(flip[1] % meta.num_columns)
    start = min(o for o in (chunk.dictionary_page_offset, chunk.data_page_offset) if o is not None)
    raw = bytearray(path.read_bytes())
    raw[start + int(flip[2] * chunk.total_compressed_size)] ^= 1 << flip[3]
    path.write_bytes(bytes(raw))
    first = sum(spec.row_groups[:group])
    spec.damaged = set(spec.columns[KEY][first : first + spec.row_groups[group]])


def _config(example: Example, data: Path, out: Path, models, speed: tuple[int, int, int] | None = None):
    """The example's job; ``speed`` (batch_size, read_rows, rows_per_shard) changes no result."""
    batch_size, read_rows, rows_per_shard = speed or (
        example.batch_size,
        example.read_rows,
        example.rows_per_shard,
    )
    return job_config(
        data, out, models, targets=example.targets, ascent=example.ascent, preserve=example.preserve,
        batch_size=batch_size, unit_rows=example.unit_rows, read_rows=read_rows,
        output={"rows_per_shard": rows_per_shard},
    )  # fmt: skip


# Where a run may crash: the n-th call of these (a unit's marker, a shard of parts/ or rejects/, the
# duplicate index, summary.json after the last commit) raises, as if the process died there. The last two
# are written once a run.
ONCE = ("duplicates", "summary")
CRASH_POINTS = {
    "marker": (folder_module.JobFolder, "commit"),
    "shard": (storage_module.LocalStorage, "write_parquet"),
    "duplicates": (duplicates_module.DuplicateIndex, "save"),
    "summary": (runner_module, "write_summary"),
}


def _crash(example: Example, config, monkeypatch) -> bool:
    """Run ``config`` with the n-th call of the example's crash point failing as a crash would; False if
    the job finished before the n-th call (nothing was interrupted)."""
    target, name = CRASH_POINTS[example.crash[0]]
    real = getattr(target, name)
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == (1 if example.crash[0] in ONCE else example.crash[1]):
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, crashing)
    try:
        run_job(config)
    except RuntimeError as exc:
        assert str(exc) == "simulated crash", exc  # any other error is a real fault of the job
        return True
    finally:
        monkeypatch.setattr(target, name, real)
    return False


def _bits(value):
    """A row value with every float as its exact bits (Arrow's equality has NaN != NaN)."""
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_bits(v) for v in value]
    if isinstance(value, dict):
        return {k: _bits(v) for k, v in value.items()}
    return value


def _rows(table: pa.Table | None, *keys: str):
    """(schema, rows sorted by ``keys``, floats as bits): what two job outputs must agree on."""
    if table is None:
        return None
    return table.schema, _bits(table.sort_by([(k, "ascending") for k in keys]).to_pylist())


def _check_exactly_once(example: Example, paths: list[Path], out: Path) -> None:
    """Every input row once in parts/ or rejects/, rejected exactly when the oracle says so."""
    parts, rejects = read_parts(out), read_rejects(out)
    keys_by_file = {str(p.resolve()): spec.columns[KEY] for p, spec in zip(paths, example.files, strict=True)}
    edited = parts.column(KEY).to_pylist() if parts is not None else []
    rejected = []
    if rejects is not None:
        for source, row in zip(
            rejects.column("source").to_pylist(), rejects.column("row").to_pylist(), strict=True
        ):
            rejected.append(keys_by_file[source][row])
    assert sorted(edited + rejected) == list(range(sum(len(f.columns[KEY]) for f in example.files)))
    unreadable = [
        k
        for k, r in zip(rejected, rejects.column("reason").to_pylist() if rejects else [], strict=True)
        if r.startswith("row group unreadable")
    ]
    damaged = {k for spec in example.files for k in spec.damaged}
    assert set(unreadable) <= damaged, "rows of an intact row group were rejected as unreadable"
    event(f"bit flipped: {example.flip is not None}, rows unreadable: {bool(unreadable)}")
    event(f"rows rejected: {'none' if not rejected else 'all' if not edited else 'some'}")
    if parts is not None:
        event(f"stop reasons: {', '.join(sorted(set(parts.column('stop_reason').to_pylist())))}")
    if example.flip is None:  # a damaged page may also be read as other values (a valid z, another id)
        expected = {
            k
            for spec in example.files
            for k, bad in zip(spec.columns[KEY], spec.rejected, strict=True)
            if bad
        }
        assert set(rejected) == expected, (sorted(set(rejected) - expected), sorted(expected - set(rejected)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and (summary["edited"], summary["rejected"]) == (len(edited), len(rejected))


@pytest.fixture(scope="module")
def fuzz_models(tmp_path_factory):
    """{conditional: (generator, classifier)}: jobkit's tiny models, unconditional and conditional."""
    root = tmp_path_factory.mktemp("fuzz-models")
    cond = GeneratorSpec(kind="course_conditional_generator", z_dim=Z_DIM, n_classes=N_LABELS, hidden_dim=4)
    assert TINY_GENERATOR.z_dim == Z_DIM and len(ATTRS) == 5
    return {False: tiny_models(root / "plain"), True: tiny_models(root / "cond", cond)}


@given(example=examples())
def test_every_row_once_and_a_crashed_job_resumes_to_the_same_result(fuzz_models, example):
    models = fuzz_models[example.conditional]
    with tempfile.TemporaryDirectory(prefix="zsteer-fuzz-") as tmp, pytest.MonkeyPatch.context() as mp:
        # Blocks of 3 decoded rows (not 1024), so a flipped bit can stop a row group part way, and the
        # resume below, with other read sizes, must stop it at the same row.
        mp.setattr(reader, "DECODE_ROWS", 3)
        root = Path(tmp)
        paths = _write(example, root / "data")
        whole = root / "whole"
        assert run_job(_config(example, root / "data", whole, models)).status == "complete"
        _check_exactly_once(example, paths, whole)

        crashed = root / "crashed"
        crashed_at = (
            example.crash[0]
            if _crash(example, _config(example, root / "data", crashed, models), mp)
            else "none"
        )
        event(f"crashed at: {crashed_at}")
        resumed = run_job(_config(example, root / "data", crashed, models, example.resume_speed))
        assert resumed.status == "complete"
        _check_exactly_once(example, paths, crashed)
        _assert_same_output(crashed, whole)


def _assert_same_output(out: Path, expected: Path) -> None:
    assert _rows(read_parts(out), KEY) == _rows(read_parts(expected), KEY)
    assert _rows(read_rejects(out), "source", "row") == _rows(read_rejects(expected), "source", "row")


def _cli(example: Example, data: Path, out: Path, models) -> list[str]:
    """`zsteer edit` with the example's settings (as _config)."""
    a = example.ascent
    cmd = [
        ZSTEER, "edit", "-m", str(data), "--out", str(out), "--generator", str(models[0]),
        "--classifier", str(models[1]), "--images", "none", "--workers", "0", "--lr", "0.5",
        "--steps", str(a["steps"]), "--penalty", str(a["penalty"]), "--unit-rows", str(example.unit_rows),
        "--read-rows", str(example.read_rows), "--batch-size", str(example.batch_size),
        "--rows-per-shard", str(example.rows_per_shard),
    ]  # fmt: skip
    cmd += [f"--target={t}" for t in example.targets]
    cmd += ["--preserve", ",".join(example.preserve)] if example.preserve else []
    cmd += ["--stop-at-prob", str(a["stop_at_prob"])] if a["stop_at_prob"] else []
    return cmd + (["--max-shift", str(a["max_shift"])] if a["max_shift"] else [])


@settings(max_examples=max(2, settings().max_examples // 10))  # a process each: seconds an example
@given(
    example=examples(), after=st.sampled_from(["commits/commit-*.json", "job.json"]), delay=st.floats(0, 0.05)
)
def test_a_job_killed_by_sigkill_resumes_to_the_same_result(fuzz_models, example, after, delay):
    """`zsteer edit` killed with SIGKILL ``delay`` seconds after its first file matching ``after`` (or
    finished first: no traceback then), resumed: the output of an uninterrupted run."""
    models = fuzz_models[example.conditional]
    with tempfile.TemporaryDirectory(prefix="zsteer-fuzz-") as tmp:
        root = Path(tmp)
        paths = _write(example, root / "data")
        whole, killed = root / "whole", root / "killed"
        run_job(_config(example, root / "data", whole, models))
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            _cli(example, root / "data", killed, models), stderr=subprocess.PIPE, text=True, env=env
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and not any(killed.glob(after)) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate()
        assert proc.returncode in (0, -signal.SIGKILL), stderr
        assert "Traceback" not in stderr, stderr
        markers = (
            len(list((killed / "commits").glob("commit-*.json"))) if (killed / "commits").exists() else 0
        )
        units = sum(spec_units(f, example.unit_rows) for f in example.files)
        event(f"killed with {'no' if not markers else 'all' if markers == units else 'some'} units committed")
        assert run_job(_config(example, root / "data", killed, models)).status == "complete"
        _check_exactly_once(example, paths, killed)
        _assert_same_output(killed, whole)


# -- what the fuzzers found, kept as plain tests ------------------------------------------------------


def test_text_that_is_not_utf8_in_a_dictionary_column_rejects_only_its_own_row(tmp_path, fuzz_models):
    """Found by the fuzzer: a per-row check took each row of a dictionary column with the whole
    dictionary, so one bad value rejected every row of the batch."""
    note = pa.array([b"ok", b"\xc3(", b"fine"], pa.binary()).view(pa.string()).dictionary_encode()
    z = pa.FixedSizeListArray.from_arrays(pa.array(latents(3).reshape(-1)), Z_DIM)
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2, 3]), "z": z, "note": note}), path)
    run_job(job_config(path, tmp_path / "job", fuzz_models[False]))
    assert read_parts(tmp_path / "job").column("id").to_pylist() == [1, 3]
    assert read_rejects(tmp_path / "job").column("reason").to_pylist() == [
        "column 'note' holds text that is not valid UTF-8"
    ]


# -- whole-file faults: one line naming the file, before anything is written --------------------------


def _set(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    """``table`` with column ``name`` replaced by (or, if absent, extended with) ``column``."""
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, column)
    return table.append_column(name, column)


def _z_list(table: pa.Table, values: np.ndarray) -> pa.Array:
    """A variable list column of ``values`` [n, k] (of any numpy dtype)."""
    n, k = values.shape
    return pa.ListArray.from_arrays(
        pa.array(np.arange(n + 1, dtype=np.int32) * k), pa.array(values.reshape(-1))
    )


def _n(table: pa.Table) -> int:
    return table.num_rows


# fault -> a function of the faulty file's table (id int64, z fixed float32, note string), or of its bytes.
TABLE_FAULTS = {
    "no_rows": lambda t: t.slice(0, 0),
    "no_z": lambda t: t.drop_columns(["z"]),
    "no_id": lambda t: t.drop_columns(["id"]),
    "z_length": lambda t: _set(
        t,
        "z",
        pa.FixedSizeListArray.from_arrays(pa.array(latents(_n(t), 9, Z_DIM + 1).reshape(-1)), Z_DIM + 1),
    ),
    "z_ints": lambda t: _set(t, "z", _z_list(t, np.ones((_n(t), Z_DIM), np.int64))),
    "z_float16": lambda t: _set(t, "z", _z_list(t, latents(_n(t)).astype(np.float16))),
    "id_float": lambda t: _set(t, "id", t.column("id").cast(pa.float64())),
    "id_uint64": lambda t: _set(t, "id", t.column("id").cast(pa.uint64())),
    "id_strings": lambda t: _set(t, "id", t.column("id").cast(pa.string())),  # the others' ids are integers
    "note_ints": lambda t: _set(t, "note", pa.array(range(_n(t)))),  # strings in the other files
    "note_floats": lambda t: _set(t, "note", pa.array(np.arange(_n(t)) / 2)),
    "output_name": lambda t: t.rename_columns(["z_edited" if c == "note" else c for c in t.column_names]),
    "steps_floats": lambda t: _set(t, "steps", pa.array(np.ones(_n(t)))),
    "stop_ints": lambda t: _set(t, "stop_at_prob", pa.array(np.ones(_n(t), np.int64))),
    "targets_ints": lambda t: _set(t, "targets", pa.array(np.ones(_n(t), np.int64))),
    "no_label": lambda t: t.drop_columns(["label"]),  # the generator is conditional
    "label_strings": lambda t: _set(t, "label", pa.array(["0"] * _n(t))),
}
BYTE_FAULTS = {
    "empty": lambda raw: b"",
    "garbage": lambda raw: bytes(range(256)) * 3,
    "truncated": lambda raw: raw[: len(raw) // 2],
    "no_magic": lambda raw: raw[:-4],
}
CONFLICTS = ("id_strings", "note_ints", "note_floats")  # faults only next to another file
LABEL_FAULTS = ("no_label", "label_strings")  # faults only for a conditional generator


def _good_table(first_id: int, rows: int, conditional: bool) -> pa.Table:
    columns = {
        "id": pa.array(range(first_id, first_id + rows), pa.int64()),
        "z": pa.FixedSizeListArray.from_arrays(pa.array(latents(rows, seed=first_id).reshape(-1)), Z_DIM),
        "note": pa.array([f"g{j}" for j in range(rows)]),
    }
    if conditional:
        columns["label"] = pa.array([0] * rows)
    return pa.table(columns)


@settings(max_examples=4 * settings().max_examples)  # no row is edited: cheap, so more examples
@given(
    fault=st.sampled_from(sorted(TABLE_FAULTS | BYTE_FAULTS)),
    good_files=st.integers(0, 2),
    rows=st.integers(1, 5),
    conditional=st.booleans(),
)
def test_a_faulty_file_is_one_line_naming_it_before_anything_is_written(
    fuzz_models, fault, good_files, rows, conditional
):
    good_files = max(good_files, fault in CONFLICTS)
    conditional = conditional or fault in LABEL_FAULTS
    with tempfile.TemporaryDirectory(prefix="zsteer-fuzz-") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "job"
        data.mkdir()
        for i in range(good_files):
            pq.write_table(_good_table(100 * i, rows, conditional), data / f"a{i}.parquet")
        bad = data / "b.parquet"  # sorted last: a conflict is found in it
        table = _good_table(1000, rows, conditional)
        pq.write_table(TABLE_FAULTS[fault](table) if fault in TABLE_FAULTS else table, bad)
        if fault in BYTE_FAULTS:
            bad.write_bytes(BYTE_FAULTS[fault](bad.read_bytes()))
        with pytest.raises(ZsteerError) as info:
            run_job(job_config(data, out, fuzz_models[conditional]))
        text = str(info.value)
        assert text.startswith(f"{bad.resolve()}: ") and "\n" not in text, text
        assert not out.exists()
