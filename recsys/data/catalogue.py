"""The item catalogue as tensors: ``items.parquet`` -> a KeyedJaggedTensor for any list of items.

    .venv/bin/python -m pytest tests/unit/models/test_two_tower.py -q

Evaluation and export embed EVERY catalogue item, and mixed negatives sample items uniformly
from the catalogue, so the item tower needs each item's ``tower: item`` features by item index.
:class:`ItemCatalogue` holds them once as CSR tensors (values + offsets per feature; row ``i`` =
item index ``i``, row 0 the OOV row, see :mod:`recsys.data.layout`) and gathers rows without
per-row Python.

Example::

    catalogue = ItemCatalogue.from_parquet(layout.catalogue_path(root, "items"), spec)
    kjt = catalogue.kjt(torch.tensor([4, 1]))
    #        i = 0          i = 1       <-- batch index (items 4 and 1)
    # "item_id"    [4]      [1]
    # "item_tags"  [7, 2]   []
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.features.spec import DatasetSpec

__all__ = ["ItemCatalogue"]


class ItemCatalogue:
    """Per-item sparse features as CSR tensors, indexed by item index.

    Args:
        features (dict[str, tuple[torch.Tensor, torch.Tensor]]): feature name -> ``(values, offsets)``:
            int64 ``values`` ``(nnz,)`` and int64 ``offsets`` ``(num_items + 1,)``; the KJT keys
            follow this dict's order.
        first_item (int): the lowest index :meth:`sample` draws (1: skip the OOV row 0). Default 1.

    Raises:
        ValueError: no features, or features with different numbers of rows.
    """

    def __init__(self, features: dict[str, tuple[torch.Tensor, torch.Tensor]], first_item: int = 1):
        if not features:
            raise ValueError("ItemCatalogue needs at least one feature")
        rows = {name: int(offsets.numel()) - 1 for name, (_, offsets) in features.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"ItemCatalogue: features have different numbers of rows {rows}; each needs one row per item")
        self._features = {n: (v.to(torch.int64), o.to(torch.int64)) for n, (v, o) in features.items()}
        self.num_items = next(iter(rows.values()))
        if not 0 <= first_item < self.num_items:
            raise ValueError(f"first_item: got {first_item}; it must lie in [0, {self.num_items}) (the catalogue's rows)")
        self.first_item = first_item

    @classmethod
    def from_table(cls, table: pa.Table, feature_names: Sequence[str], first_item: int = 1) -> "ItemCatalogue":
        """From an Arrow table in the ``items.parquet`` layout (int64 or list<int64> columns).

        Raises:
            ValueError: a requested feature is not a column of the table.
        """
        missing = [n for n in feature_names if n not in table.column_names]
        if missing:
            raise ValueError(
                f"item catalogue: features {missing} are not columns of the catalogue {table.column_names}; "
                "re-ingest the data with this spec (items.parquet holds every tower: item feature)"
            )
        features = {}
        for name in feature_names:
            col = table.column(name).combine_chunks()
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                if col.null_count:
                    col = col.fill_null(pa.scalar([], col.type))
                offsets = col.offsets.to_numpy().astype(np.int64)
                values = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(zero_copy_only=False)
                offsets = offsets - offsets[0]
            else:
                values = col.to_numpy(zero_copy_only=False)
                offsets = np.arange(values.size + 1, dtype=np.int64)
            features[name] = (torch.from_numpy(np.asarray(values, np.int64).copy()), torch.from_numpy(offsets.copy()))
        return cls(features, first_item=first_item)

    @classmethod
    def from_parquet(cls, path: str | Path, spec: DatasetSpec, first_item: int = 1) -> "ItemCatalogue":
        """Read ``items.parquet`` with the spec's ``tower: item`` features, in spec order."""
        names = [f.name for f in spec.sparse if f.tower == "item"]
        return cls.from_table(pq.read_table(path, columns=names), names, first_item=first_item)

    @property
    def feature_names(self) -> list[str]:
        return list(self._features)

    def __len__(self) -> int:
        return self.num_items

    def kjt(self, items: torch.Tensor, device: torch.device | str | None = None) -> KeyedJaggedTensor:
        """The item features of ``items`` (``(M,)`` item indices) as a KJT of stride M, keys in catalogue order."""
        items = items.to(torch.int64).cpu()
        values, lengths = [], []
        for feature_values, offsets in self._features.values():
            start = offsets[items]  # (M,)
            lens = offsets[items + 1] - start  # (M,)
            within = torch.arange(int(lens.sum())) - torch.repeat_interleave(torch.cumsum(lens, 0) - lens, lens)
            values.append(feature_values[torch.repeat_interleave(start, lens) + within])
            lengths.append(lens)
        kjt = KeyedJaggedTensor(
            keys=self.feature_names,
            values=torch.cat(values),
            lengths=torch.cat(lengths).to(torch.int32),
            stride=int(items.numel()),
        )
        return kjt.to(torch.device(device)) if device is not None else kjt

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(num,)`` item indices drawn uniformly (with replacement) from ``[first_item, num_items)``."""
        return torch.randint(self.first_item, self.num_items, (num,), generator=generator)

    @property
    def num_sampleable(self) -> int:
        """N, the number of items :meth:`sample` draws from (the uniform probability is 1 / N)."""
        return self.num_items - self.first_item
