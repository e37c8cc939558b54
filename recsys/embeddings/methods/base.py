"""The contract every compression method implements for one logical feature.

A method is an ``nn.Module`` (it may own dense parameters such as projections, never lookup
tables) that says three things, and nothing else:

- :meth:`FeatureMethod.tables`: the physical tables it owns (shared tables belong to the group);
- :meth:`FeatureMethod.transform`: logical ``(values, lengths)`` -> chunks of physical features,
  each chunk ``(keys, values, lengths)`` holding ``len(keys)`` consecutive jagged features of the
  same batch (lengths ``(len(keys) * B,)``), all routed to the same inner collection;
- :meth:`FeatureMethod.combiner`: how the physical outputs become the feature's SUM-pooled
  ``(B, D)`` vector, as data (:mod:`recsys.embeddings.combine`: ``Concat``, ``Sum``, ``Product``,
  ``Projected``, ``Weighted``, ``PerValue``). The collection compiles every feature's declaration
  into one vectorised plan; a method never combines tensors itself, and mean pooling is the
  plan's job.

Adding a method: its schema half ``recsys/features/methods/<kind>.py`` (``SCHEMA``: compression
spec, budget options, solver-owned fields, feature checks), its build half
``recsys/embeddings/methods/<kind>.py`` (a ``FeatureMethod`` with these three plus ``describe``
for the plan printout, and ``FAMILY``: build, naive reference, the solver's knob), its kind in
:data:`recsys.features.methods.KINDS`, and its tests. Nothing else is edited.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from recsys.embeddings.combine import Combiner
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
    precision: str = "fp32"  # of the rows of its tables; set by the builder from the compression spec

    def __init__(self, feature: str, output_dim: int, multi_valued: bool):
        super().__init__()
        self.feature = feature
        self.output_dim = output_dim
        self.multi_valued = multi_valued

    def tables(self) -> list[TableSpec]:
        raise NotImplementedError

    def transform(self, values: torch.Tensor, lengths: torch.Tensor) -> list[Chunk]:
        raise NotImplementedError

    def planned_tables(self) -> list[TableSpec]:
        """:meth:`tables` at the method's row precision (what the collection builds and the plan counts)."""
        return [replace(t, precision=self.precision) for t in self.tables()]

    def combiner(self) -> Combiner:
        """The combiner declaration (keys it reads are physical features of :meth:`tables` or of
        the group's shared tables)."""
        raise NotImplementedError

    def describe(self) -> tuple[str, str]:
        """(transform, combiner) in words, for the plan."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Dense parameters only; the lookup tables are reset by the inner collections."""

    def extra_notes(self) -> list[str]:
        return []


def uniform_bound(rows: int) -> float:
    """torchrec's default init bound ``sqrt(1 / rows)``: the 'standard embedding' scale."""
    return math.sqrt(1.0 / max(rows, 1))


def split_dim(dim: int, parts: int) -> list[int]:
    """Split ``dim`` into ``parts`` multiples of 4 as evenly as possible (larger parts first)."""
    quads, extra = divmod(dim // 4, parts)
    return [4 * (quads + (1 if i < extra else 0)) for i in range(parts)]
