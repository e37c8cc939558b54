"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_session():
    """Shut down the Ray instance a module's jobs started (``recsys train`` starts its own)."""
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()
