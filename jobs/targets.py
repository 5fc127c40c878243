"""Targets: the job's (``--target``, ``--preserve``) and each row's (a ``targets`` column) as weights.

Rows of one job may ask for different edits; the engine takes a weight vector per row, so they still
share a batch. Per-row parsing is cached by value: a manifest usually holds a handful of distinct edits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from zsteer.core.errors import ZsteerError
from zsteer.pipeline.attributes import FLOAT32_MAX, parse_target, resolve_attribute
from zsteer.pipeline.engine import target_vector

CACHE_LIMIT = 4096  # distinct override values kept; a manifest with more just parses again
# Longest JSON `targets` string parsed: a few dozen attributes take well under 1 kB; more is not a target
# list, and parsing megabytes per row would stall the job.
MAX_JSON_CHARS = 65536


@dataclass(frozen=True)
class JobTargets:
    """The job-wide edit, resolved against the classifier's attribute names."""

    # (canonical name, weight) per --target, as recorded in job.json.
    targets: tuple[tuple[str, float], ...]
    # Canonical names of --preserve, or None (every attribute that is not a target of the row).
    preserve: tuple[str, ...] | None
    weights: np.ndarray  # [A] float32 signed weights (zeros when only per-row targets are given)
    preserve_mask: np.ndarray | None  # [A] float32 1.0 for --preserve attributes, or None


def resolve_job_targets(
    specs: tuple[str, ...], preserve: tuple[str, ...] | None, names: tuple[str, ...], per_row: bool
) -> JobTargets:
    """Check ``--target`` / ``--preserve`` against ``names``; unknown names suggest the closest ones."""
    if not specs and not per_row:
        raise ZsteerError(
            "--target: give at least one attribute to edit (NAME or NAME=WEIGHT), "
            "or a per-row 'targets' column in the manifest"
        )
    pairs = [parse_target(spec, names) for spec in specs]
    weights = target_vector(pairs, len(names)).numpy()
    if specs and not weights.any():
        raise ZsteerError(f"--target {' '.join(specs)}: every weight is 0, nothing to edit")
    mask = None
    if preserve is not None:
        idx = [resolve_attribute(p, names, where=f"--preserve {p!r}") for p in preserve]
        mask = np.zeros(len(names), np.float32)
        mask[idx] = 1.0
        preserve = tuple(names[i] for i in idx)
    return JobTargets(tuple((names[i], w) for i, w in pairs), preserve, weights, mask)


class TargetParser:
    """Turns per-row targets (JSON object string, map, or list of {name, weight}) into [A] weights."""

    def __init__(self, attributes: tuple[str, ...]):
        self.attributes = attributes
        self._cache: dict[object, np.ndarray | str] = {}

    def _pairs_to_vector(self, pairs) -> np.ndarray | str:
        targets = []
        for name, weight in pairs:
            if not isinstance(name, str):
                return f"targets: attribute name {name!r} is not a string"
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                return f"targets: weight of {name!r} is not a number ({weight!r})"
            try:
                value = float(weight)
            except OverflowError:  # a JSON integer of 400 digits
                value = math.inf
            if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
                return f"targets: weight of {name!r} is not a finite float32 ({value:.3g})"
            try:
                targets.append((resolve_attribute(name, self.attributes, where="targets"), value))
            except ZsteerError as exc:
                return str(exc)
        vector = target_vector(targets, len(self.attributes)).numpy()
        if not np.isfinite(vector).all():  # one attribute named twice, its weights summing past float32
            return "targets: the weights of an attribute named more than once add up past float32's range"
        if not vector.any():
            return "targets: no attribute with a non-zero weight"
        return vector

    def _parse_value(self, value) -> np.ndarray | str:
        if isinstance(value, str):
            if len(value) > MAX_JSON_CHARS:
                return f"targets: {len(value)} characters of JSON, more than {MAX_JSON_CHARS} (one name per attribute)"
            try:
                obj = json.loads(value)
            except json.JSONDecodeError as exc:
                return f"targets: not valid JSON ({exc.msg})"
            except RecursionError:  # json nests by recursion: [[[[...]]]] 100,000 deep
                return 'targets: JSON nested too deeply (expected a flat object like {"Smiling": 1})'
            if not isinstance(obj, dict):
                return 'targets: expected a JSON object like {"Smiling": 1}'
            return self._pairs_to_vector(obj.items())
        if any(item is None for item in value):
            return "targets: an element of the list is null (expected a name and a weight)"
        if value and isinstance(value[0], dict):  # list<struct<name, weight>>
            return self._pairs_to_vector((item["name"], item["weight"]) for item in value)
        return self._pairs_to_vector(value)  # map<string, number> -> [(key, value), ...]

    def parse_column(self, column: pa.Array) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(weights [n, A] float32, has_override [n] bool, {row: reason}) for one chunk's column.

        Rows with a null value have no override (the job's targets apply); rows whose value cannot be
        used get a reason instead and are rejected.
        """
        n = len(column)
        weights = np.zeros((n, len(self.attributes)), np.float32)  # [n, A]
        has = np.zeros(n, bool)
        errors: dict[int, str] = {}
        for i, value in enumerate(column.to_pylist()):
            if value is None:
                continue
            key = value if isinstance(value, str) else _freeze(value)
            parsed = self._cache.get(key)
            if parsed is None:
                try:
                    parsed = self._parse_value(value)
                except (TypeError, ValueError, KeyError, IndexError, RecursionError, ArithmeticError) as exc:
                    # A shape of value no check above foresaw: the row is rejected, never the job stopped
                    # (a row that raised here would stop every resume at the same row).
                    parsed = f"targets: unusable value ({type(exc).__name__}: {exc})"
                if len(self._cache) >= CACHE_LIMIT:
                    self._cache.clear()
                self._cache[key] = parsed
            if isinstance(parsed, str):
                errors[i] = parsed
            else:
                weights[i] = parsed
                has[i] = True
        return weights, has, errors


def _freeze(value) -> tuple:
    """A hashable form of a map (list of pairs) or list-of-struct value, for the cache."""
    return tuple(
        None if item is None else tuple(item.values()) if isinstance(item, dict) else tuple(item)
        for item in value
    )
