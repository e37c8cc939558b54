"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os

import pytest

# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default):
# a run's end and a worker's death are seen up to that late. Tests run many short trainings, so
# they poll faster; the workers' results are the same (it only changes when the driver looks).
# Set before any Ray instance starts: the raylet's workers inherit the driver's environment.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture(scope="module")
def ray_session():
    """Shut down the Ray instance a module's jobs started (``recsys train`` starts its own)."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray instance for a module's in-process trainings, shut down after the module.

    ``recsys.train.run.launch`` uses a Ray that is already initialised (and leaves it running)
    instead of starting and stopping its own per run: ~5 s less per training here. The settings
    are those ``launch`` uses (``address="local"``, enough logical CPUs for the largest run of the
    tests, Ray's loggers at ERROR). Trainings in a subprocess (``python -m jobs.cli train``)
    still start their own.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, 8), include_dashboard=False,
                 logging_config=ray.LoggingConfig(log_level=os.environ.get("RECSYS_RAY_LOG_LEVEL", "ERROR")))
    yield
    if ray.is_initialized():
        ray.shutdown()
