"""The contract every compression method implements for one logical feature.

A method is an ``nn.Module`` (it may own dense parameters such as projections, never lookup
tables) that says:

- :meth:`FeatureMethod.tables`: the physical tables it owns (shared tables belong to the group);
- :meth:`FeatureMethod.transform`: logical ``(values, lengths)`` -> chunks of physical features,
  each chunk ``(keys, values, lengths)`` holding ``len(keys)`` consecutive jagged features of the
  same batch (lengths ``(len(keys) * B,)``), all routed to the same inner collection;
- :meth:`FeatureMethod.combine`: the physical outputs -> the feature's SUM-pooled ``(B, D)``
  vector (the collection divides by the logical bag length for ``mean`` pooling);
- optionally :meth:`FeatureMethod.pooled_layout`: the same combiner declared as data (concat /
  sum / product of pooled physical features), which the collection vectorises across features;
- optionally :meth:`FeatureMethod.pooled_pieces` + :meth:`FeatureMethod.combine_pieces`: the
  combiner fed wider column blocks of the pooled output (e.g. several tables side by side).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor

from recsys.embeddings.plan import TableSpec

Chunk = tuple[list[str], torch.Tensor, torch.Tensor]


class FeatureMethod(nn.Module):
    """Base class: one logical feature compiled to physical features.

    Args:
        feature (str): logical feature name.
        output_dim (int): the feature's embedding_dim.
        multi_valued (bool): bags may hold more than one value (max_length > 1).
    """

    kind: str = "?"

    def __init__(self, feature: str, output_dim: int, multi_valued: bool):
        super().__init__()
        self.feature = feature
        self.output_dim = output_dim
        self.multi_valued = multi_valued

    def tables(self) -> list[TableSpec]:
        raise NotImplementedError

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        raise NotImplementedError

    def combine(
        self,
        pooled: dict[str, torch.Tensor],
        per_value: dict[str, JaggedTensor],
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError

    def pooled_keys(self) -> list[str]:
        """Physical features whose pooled outputs :meth:`combine` reads (per-value ones included)."""
        return [k for t in self.tables() for k in t.feature_names]

    def pooled_layout(self) -> tuple[str, list[str]] | None:
        """``(op, keys)`` when the combiner is a plain function of pooled physical features, else None.

        ``op`` is ``concat`` (the keys' pooled columns side by side), ``sum`` or ``prod`` (of the
        keys' equally wide pooled outputs, left to right). The collection then combines many
        features with a few vectorised tensor ops on the pooled output instead of calling
        :meth:`combine` per feature; the result is the same as :meth:`combine`'s.
        """
        return None

    def pooled_pieces(self) -> list[list[str]] | None:
        """Groups of pooled keys, each read by :meth:`combine_pieces` as ONE column block (the keys'
        pooled columns side by side, in this order), or None to use :meth:`combine`."""
        return None

    def combine_pieces(self, pieces: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        """:meth:`combine` from the column blocks of :meth:`pooled_pieces` (same result).

        Only called for methods whose :meth:`pooled_pieces` is not None; they must override it.
        """
        raise TypeError(f"{type(self).__name__} declares pooled_pieces() but does not implement combine_pieces()")

    def describe(self) -> tuple[str, str]:
        """(transform, combiner) in words, for the plan."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Dense parameters only; the lookup tables are reset by the inner collections."""

    def extra_notes(self) -> list[str]:
        return []


def pool_sum(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum per-value rows ``(N, D)`` into their bags ``(B, D)``; empty bags give zeros."""
    batch = lengths.numel()
    segment = torch.repeat_interleave(torch.arange(batch, device=lengths.device), lengths, output_size=values.shape[0])
    out = torch.zeros(batch, values.shape[1], dtype=values.dtype, device=values.device)
    return out.index_add(0, segment, values)


def uniform_bound(rows: int) -> float:
    """torchrec's default init bound ``sqrt(1 / rows)``: the 'standard embedding' scale."""
    return math.sqrt(1.0 / max(rows, 1))


def split_dim(dim: int, parts: int) -> list[int]:
    """Split ``dim`` into ``parts`` multiples of 4 as evenly as possible (larger parts first)."""
    quads, extra = divmod(dim // 4, parts)
    return [4 * (quads + (1 if i < extra else 0)) for i in range(parts)]
