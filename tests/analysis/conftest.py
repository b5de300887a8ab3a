"""Fixtures over :mod:`analysis.testing`: experiment folders written by hand in Ray Tune's
layout, so analysis tests need no Ray."""

from __future__ import annotations

import pytest

from analysis.testing import FakeExperiment, make_experiment, write_study


@pytest.fixture
def fake_experiment():
    """make_experiment(root, name="fake", running=False, points=False) -> FakeExperiment."""
    return make_experiment


@pytest.fixture(scope="session")
def finished_experiment(tmp_path_factory) -> FakeExperiment:
    return make_experiment(tmp_path_factory.mktemp("finished"))


@pytest.fixture(scope="session")
def running_experiment(tmp_path_factory) -> FakeExperiment:
    return make_experiment(tmp_path_factory.mktemp("running"), running=True)


@pytest.fixture(scope="session")
def study_writer():
    """write_study(path, study_name, [(params, value or None for RUNNING)])."""
    return write_study
