"""Fixtures of the serving tests: a checkpointed run (no Ray) and its fp32 exact bundle."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: intra-op threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``(data dir, run dir)``: synthetic interactions with a history feature + a checkpoint in the training format."""
    from serving.testing import make_run

    return make_run(tmp_path_factory.mktemp("serving_run"))


@pytest.fixture(scope="session")
def fp32_bundle(trained_run, tmp_path_factory):
    from serving.export import export_bundle

    return export_bundle(trained_run[1], tmp_path_factory.mktemp("bundles") / "fp32", precision="fp32", index="exact")
