"""A finished (or partial) job folder read back for drawing and judging: `zsteer sheet` and `zsteer report`.

``open_job`` reads job.json, checks that the generator and manifests are still the ones the job ran with,
and loads the generator; ``ManifestLatents`` finds the starting z of output rows by id, reading the
manifests in file order with a bounded window (parts follow manifest order, so one pass usually does).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.checkpoints import LoadedModel, load_generator

from .folder import JOB_JSON, JobFolder
from .storage import AnyPath, FileStat, locate, storage_of


@dataclass(frozen=True)
class JobView:
    """What a job recorded, with its generator loaded."""

    # The job folder.
    folder: JobFolder
    # job.json as written by the job.
    doc: dict
    # The job's generator, checked against the fingerprint in job.json.
    generator: LoadedModel
    # Manifest paths, in the job's order.
    inputs: tuple[str, ...]
    # (attribute name, weight) pairs of the job's targets; empty for methods without targets.
    targets: tuple[tuple[str, float], ...]
    # The steering classifier's attribute names and fingerprint.
    attributes: tuple[str, ...]
    classifier_fingerprint: str

    @property
    def direction_settings(self) -> dict:
        """A direction job's settings from job.json (``identity.direction``); {} for other methods."""
        settings = self.doc.get("identity", {}).get("direction")
        return settings if isinstance(settings, dict) else {}

    @property
    def direction(self) -> str | None:
        """The direction a direction job moved along (named after the attribute it was fitted to)."""
        name = self.direction_settings.get("direction")
        return name if isinstance(name, str) else None

    @property
    def strip_column(self) -> str | None:
        """The column that tells apart the output rows of one input row in a strip job: ``alpha`` for a
        direction strip (``--alphas``), ``frame`` for an interpolation; None when each input row has one
        output row (a direction job also writes ``alpha`` then: the strength each row got)."""
        if self.direction_settings.get("alphas"):
            return "alpha"
        return "frame" if self.doc.get("identity", {}).get("method") == "interpolate" else None

    def committed_parts(self) -> list[AnyPath]:
        """The parts/ shards of committed units, in job order (a unit in progress is not read)."""
        return self.folder.committed_parts()


def job_field(job: dict, key: str, kind: type, where: Path):
    """``job["a"]["b"]`` for key "a.b", checked to be a ``kind``; a missing or odd value is one line."""
    value = job
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, kind):
        raise ZsteerError(
            f"{where}: no valid {key!r} (expected a {kind.__name__}); the file was edited or written by "
            "another zsteer version"
        )
    return value


def read_job_doc(path: Path | str, hint: str = "not a job folder zsteer can read") -> tuple[JobFolder, dict]:
    """The job folder ``path`` (a path or a URI) and its job.json; a folder without one, or with one that
    is not a JSON object, is a one-line ZsteerError ending in ``hint``."""
    folder = JobFolder(locate(path, "JOB"))
    found = folder.storage.stat(folder.job_json)
    if found is None or found.kind != "file":
        raise ZsteerError(f"{path}: not a zsteer job folder (no {JOB_JSON})")
    return folder, folder.read_job(hint=hint)


def open_job(path: Path | str, hint: str = "not a job folder zsteer can read") -> JobView:
    """Read the job folder ``path`` (a path or a URI); every missing or changed piece is a one-line
    ZsteerError."""
    folder, job = read_job_doc(path, hint)
    where = folder.job_json
    gen_path = job_field(job, "runtime.generator_path", str, where)
    gen_spec = job_field(job, "identity.generator.spec", dict, where)
    fingerprint = job_field(job, "identity.generator.fingerprint", str, where)
    inputs = job_field(job, "identity.inputs", dict, where)
    for manifest, recorded in inputs.items():  # a manifest rewritten in place would give wrong 'before' z
        size = recorded.get("bytes") if isinstance(recorded, dict) else None
        there = _stat(manifest)
        if size is not None and there is not None and there.kind == "file" and there.size != size:
            raise ZsteerError(f"{manifest}: the job's manifest changed since the job ran ({size} bytes then)")
    raw_targets = job.get("identity", {}).get("targets") or []
    if not isinstance(raw_targets, list) or not all(
        isinstance(t, list) and len(t) == 2 and isinstance(t[0], str) and isinstance(t[1], int | float)
        for t in raw_targets
    ):
        raise ZsteerError(f"{where}: 'identity.targets' expected a list of [name, weight] pairs")
    classifier = job_field(job, "identity.classifier", dict, where)
    names = classifier.get("attributes")
    generator = load_generator(gen_path, **gen_spec)
    if generator.fingerprint != fingerprint:
        raise ZsteerError(f"{gen_path}: changed since the job ran (fingerprint differs)")
    return JobView(
        folder=folder,
        doc=job,
        generator=generator,
        inputs=tuple(inputs),
        targets=tuple((name, float(weight)) for name, weight in raw_targets),
        attributes=tuple(names) if isinstance(names, list) else (),
        classifier_fingerprint=str(classifier.get("fingerprint", "")),
    )


def _stat(text: str) -> FileStat | None:
    """What is at a manifest path or URI job.json recorded (None: nothing, or not a location)."""
    try:
        where = locate(text, "input")
        return storage_of(where).stat(where)
    except (ZsteerError, OSError):
        return None


class ManifestLatents:
    """z [n, z_dim] (and labels [n]) of rows by id, from a job's manifests.

    Row groups are read in file order and kept in a window of ``window`` groups; an id not in the window
    reads on, and past the end starts again from the first group, so out-of-order ids are found too
    (slower), and memory stays at a few row groups whatever the manifest's size.
    """

    def __init__(self, inputs: list[str] | tuple[str, ...], window: int = 4):
        self.inputs = list(inputs)
        self.window = window
        self._groups: OrderedDict[tuple[str, int], dict] = OrderedDict()
        self._reader: Iterator[tuple[tuple[str, int], dict]] | None = None

    def _read_groups(self) -> Iterator[tuple[tuple[str, int], dict]]:
        for path in self.inputs:
            found = _stat(path)
            if found is None or found.kind != "file":
                raise ZsteerError(
                    f"{path}: the job's manifest is not there (moved or deleted); the 'before' images are "
                    "rendered from it: put it back at that path"
                )
            try:
                where = locate(path, "input")
                reader = storage_of(where).parquet_file(where)
            except (pa.ArrowException, OSError) as exc:
                raise ZsteerError(
                    f"{path}: the job's manifest is no longer readable Parquet ({exc})"
                ) from None
            columns = [c for c in ("id", "z", "label") if c in reader.schema_arrow.names]
            for group in range(reader.num_row_groups):
                table = reader.read_row_group(group, columns=columns).to_pydict()
                labels = table.get("label")
                rows = {
                    key: (table["z"][i], None if labels is None else labels[i])
                    for i, key in enumerate(table["id"])
                }
                yield (path, group), rows

    def _find(self, key) -> tuple:
        for rows in reversed(self._groups.values()):
            if key in rows:
                return rows[key]
        restarted = False
        while True:
            if self._reader is None:
                self._reader = self._read_groups()
            entry = next(self._reader, None)
            if entry is None:
                self._reader = None
                if restarted or not self.inputs:
                    raise ZsteerError(
                        f"id {key!r} of the job's output is in none of its manifests {self.inputs}"
                    )
                restarted = True
                continue
            group_key, rows = entry
            self._groups[group_key] = rows
            self._groups.move_to_end(group_key)
            while len(self._groups) > self.window:
                self._groups.popitem(last=False)
            if key in rows:
                return rows[key]

    def lookup(self, ids: list) -> tuple[np.ndarray, np.ndarray | None]:
        """(z [n, z_dim] float32, labels [n] or None) of ``ids``."""
        found = [self._find(key) for key in ids]
        z = np.asarray([row[0] for row in found], dtype=np.float32)
        labels = [row[1] for row in found]
        return z, (np.asarray(labels) if labels and labels[0] is not None else None)
