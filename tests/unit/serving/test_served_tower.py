"""The served user tower (export's per-call checks dropped) answers exactly as the program's default module."""

from __future__ import annotations

import torch


def test_served_tower_equals_the_checked_program_module_without_its_asserts(fp32_bundle):
    from serving.bundle import USER_TOWER
    from serving.loadgen import random_users
    from serving.service import LoadedService

    service = LoadedService.from_path(fp32_bundle)
    checked = torch.export.load(str(fp32_bundle / USER_TOWER)).module()
    served = service.bundle.user_tower
    targets = {n.target for n in served.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten._assert_scalar.default not in targets and torch.ops.aten._assert_tensor_metadata.default not in targets
    assert len(served.graph.nodes) < len(checked.graph.nodes)
    users = [service.encoder.parse(u) for u in random_users(service.bundle, 64)]
    with torch.inference_mode():
        for batch in ([users[0]], users[:2], users[:7], users):  # batch 1 is padded by the encoder
            inputs = service.encoder.encode(batch)
            assert torch.equal(served(*inputs), checked(*inputs))
