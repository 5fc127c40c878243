"""Fixtures shared by the test modules.

Helpers that are not fixtures stay in the kits beside this file, imported by module name (pytest puts
tests/ on sys.path): ``modelkit`` (unit-gain models saved to disk), ``jobkit`` (tiny job models,
manifests, reading a job back), ``exportkit`` (in-memory models with real gain, edge-case rows).
Every fixture here is module-scoped: a module that asks for one shares it across its tests, as the
modules did when each defined its own.
"""

from __future__ import annotations

import pytest
from exportkit import gain_models
from hypothesis import HealthCheck, settings
from jobkit import one_thread, tiny_models
from modelkit import load_models

# Hypothesis profiles (tests/test_fuzz_*.py), picked with `pytest --hypothesis-profile NAME` (hypothesis's
# own pytest option). "ci", the default: CI-sized and derandomized, the same examples every run, so a
# run never fails on an example no earlier run saw. "long": many more fresh examples for a local hunt;
# failing ones are kept in .hypothesis/ and tried first next time. Jobs run seconds, so no deadline.
_SLOW_OK = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("ci", max_examples=25, derandomize=True, database=None, print_blob=True, **_SLOW_OK)
settings.register_profile("long", max_examples=500, print_blob=True, **_SLOW_OK)
settings.load_profile("ci")


@pytest.fixture(scope="module")
def single_thread():
    """torch on one thread for the whole module (``jobkit.one_thread``); use it with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def job_models(tmp_path_factory):
    """(generator, classifier) paths of jobkit's tiny models, written once per module."""
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def unit_gain_models(tmp_path_factory):
    """(generator, classifier) LoadedModels of modelkit's small unit-gain models, saved and loaded back."""
    return load_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def gain_pair():
    """(generator, classifier) LoadedModels with real gain, z_dim 8, hidden 8, 5 attributes (exportkit)."""
    return gain_models(z_dim=8, hidden_dim=8, n_attributes=5)
