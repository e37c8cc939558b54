"""``CompressedEmbeddingBagCollection``: a drop-in ``EmbeddingBagCollection`` for compressed features.

``forward(KeyedJaggedTensor) -> KeyedTensor`` with one key per LOGICAL feature at its declared
dim, whatever the method. Inside, every method is compiled to (1) an index transform into
physical features, (2) ordinary TorchRec tables: all pooled ones in ONE
``torchrec.EmbeddingBagCollection`` (``self.embedding_bags``) plus, only where per-value vectors
are needed before pooling, ``torchrec.EmbeddingCollection``s (``self.embeddings``, one per dim
because an EC needs a single dim), and (3) a combiner. ``DistributedModelParallel`` finds and
shards those inner collections; dense parameters (projections) are data-parallel.

Example::

    #        i = 0     i = 1    i = 2   <-- batch index
    # "C1"   [5]       [7]      []
    # "M1"   [0, 1]    None     [2, 9, 4]
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["C1", "M1"], values=torch.tensor([5, 7, 0, 1, 2, 9, 4]), lengths=torch.tensor([1, 1, 0, 2, 0, 3])
    )
    kt = collection(kjt)   # KeyedTensor, kt.values(): (B, sum(D_f)) = (3, 16 + 16)
    kt["C1"]               # (3, 16); empty bags give zero vectors
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.embeddings.methods.base import FeatureMethod
from recsys.embeddings.plan import EmbeddingPlan, FeaturePlan, TableSpec

_BAGS = "bags"


class CompressedEmbeddingBagCollection(nn.Module):
    """Compressed embeddings for many sparse features, with TorchRec's EBC contract.

    Args:
        methods (Sequence[FeatureMethod]): one compiled method per logical feature, in output order.
        shared_tables (Sequence[TableSpec]): tables owned by groups (unified), read by several features.
        pooling (dict[str, str] | None): ``sum`` (default) or ``mean`` per feature; mean divides the
            sum by the logical bag length (empty bags stay zero).
        full_rows (dict[str, int] | None): each feature's cardinality, for the plan's full-table ratio.
        notes (Sequence[str]): extra lines for the plan (solver decisions, assumptions).
        device (torch.device | str | None): ``meta`` builds without memory; then ``to_empty`` and
            :meth:`reset_parameters`.
    """

    def __init__(
        self,
        methods: Sequence[FeatureMethod],
        shared_tables: Sequence[TableSpec] = (),
        pooling: dict[str, str] | None = None,
        full_rows: dict[str, int] | None = None,
        notes: Sequence[str] = (),
        device: torch.device | str | None = None,
    ):
        super().__init__()
        if not methods:
            raise ValueError("CompressedEmbeddingBagCollection needs at least one feature")
        self.methods = nn.ModuleDict({m.feature: m for m in methods})
        self._feature_names = [m.feature for m in methods]
        self._dims = [m.output_dim for m in methods]
        pooling = pooling or {}
        self._mean = [pooling.get(m.feature, "sum") == "mean" for m in methods]
        self._full_rows = dict(full_rows or {})
        self._notes = list(notes)
        self._tables = [t for m in methods for t in m.tables()] + list(shared_tables)

        self._destination: dict[str, str] = {}
        bag_configs: list[EmbeddingBagConfig] = []
        per_value: dict[int, list[EmbeddingConfig]] = {}
        for t in self._tables:
            common = dict(
                name=t.name,
                num_embeddings=t.num_embeddings,
                embedding_dim=t.embedding_dim,
                feature_names=list(t.feature_names),
                weight_init_min=t.init_min,
                weight_init_max=t.init_max,
            )
            if t.per_value:
                per_value.setdefault(t.embedding_dim, []).append(EmbeddingConfig(**common))
                dest = f"dim{t.embedding_dim}"
            else:
                bag_configs.append(EmbeddingBagConfig(pooling=PoolingType.SUM, **common))
                dest = _BAGS
            for key in t.feature_names:
                self._destination[key] = dest
        # Physical pooling is always SUM: exact for split bags; mean is applied with logical lengths.
        self.embedding_bags = EmbeddingBagCollection(tables=bag_configs, device=device) if bag_configs else None
        self.embeddings = nn.ModuleDict(
            {f"dim{d}": EmbeddingCollection(tables=cfgs, device=device) for d, cfgs in per_value.items()}
        )
        self._compile_combiner(bag_configs)

    def _compile_combiner(self, bag_configs: list[EmbeddingBagConfig]) -> None:
        """Precompute how the pooled ``(B, sum d)`` output of the bag collection becomes the output.

        The pooled columns come in table order (each table's features in order). Consecutive
        features whose method declares a :meth:`FeatureMethod.pooled_layout` of the same kind are
        merged into one run, combined by one slice (or gather) and one reduction; a method without
        layout keeps its own ``combine``, fed its keys' pieces of the same single split (or, when it
        declares :meth:`FeatureMethod.pooled_pieces`, its ``combine_pieces``, fed wider pieces that
        each span several side-by-side keys: e.g. mixed_dim's projected blocks, one matmul). When every
        feature is a ``concat`` in pooled order, the pooled output IS the result (no copy). The
        forward falls back to the per-feature path when the pooled keys come in another order.
        """
        self._bag_keys: list[str] = [k for c in bag_configs for k in c.feature_names]
        offsets, width = {}, {}
        start = 0
        for c in bag_configs:
            for k in c.feature_names:
                offsets[k], width[k] = start, c.embedding_dim
                start += c.embedding_dim
        self._bag_slices = {k: (offsets[k], offsets[k] + width[k]) for k in self._bag_keys}
        # runs: [op, k, d, n_features, columns]; op "custom" holds the feature index instead.
        runs: list[list] = []
        for i, name in enumerate(self._feature_names):
            layout = self.methods[name].pooled_layout()
            if layout is None or any(self._destination.get(k) != _BAGS for k in layout[1]):
                runs.append(["custom", i, None, 1, None])
                continue
            op, keys = layout
            cols = [c for k in keys for c in range(*self._bag_slices[k])]
            if op == "concat":
                k, d = 1, len(cols)
            else:
                k, d = len(keys), width[keys[0]]
                if any(width[key] != d for key in keys):
                    runs.append(["custom", i, None, 1, None])
                    continue
            last = runs[-1] if runs else None
            if last is not None and last[0] == op and (op == "concat" or (last[1] == k and last[2] == d)):
                last[3] += 1
                last[4].extend(cols)
            else:
                runs.append([op, k, d, 1, cols])
        # The pooled output is cut ONCE (one split, whose backward is one concat of the gradients;
        # many overlapping slices would each zero-fill a full-size gradient) at the boundaries of
        # the contiguous runs and of the keys read by custom combiners.
        total = start
        cuts = {0, total}
        # custom features whose method reads wider column blocks (pooled_pieces): feature -> blocks
        wide: dict[int, list[tuple[int, int]]] = {}
        for op, k, d, n, cols in runs:
            if op == "custom":
                blocks = self._piece_blocks(self.methods[self._feature_names[k]])
                if blocks is not None:
                    wide[k] = blocks
                    for block in blocks:
                        cuts.update(block)
                    continue
                for key in self.methods[self._feature_names[k]].pooled_keys():
                    if key in self._bag_slices:
                        cuts.update(self._bag_slices[key])
            elif cols == list(range(cols[0], cols[0] + len(cols))):
                cuts.update((cols[0], cols[0] + len(cols)))
        bounds = sorted(cuts)
        self._split_sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        piece_at = {a: i for i, a in enumerate(bounds[:-1])}
        self._custom_pieces = {
            key: piece_at[a] for key, (a, b) in self._bag_slices.items() if a in piece_at and bounds[piece_at[a] + 1] == b
        }
        self._runs: list[tuple] = []
        for op, k, d, n, cols in runs:
            if op == "custom":
                if k in wide and all(a in piece_at and bounds[piece_at[a] + 1] == b for a, b in wide[k]):
                    self._runs.append(("pieces", k, None, None, [piece_at[a] for a, _ in wide[k]]))
                else:
                    self._runs.append((op, k, None, None, None))
            elif cols == list(range(cols[0], cols[0] + len(cols))):
                self._runs.append((op, k, d, n, piece_at[cols[0]]))
            else:
                self._runs.append((op, k, d, n, list(cols)))  # a gather (e.g. chunks on several shared tables)

    def _piece_blocks(self, method: FeatureMethod) -> list[tuple[int, int]] | None:
        """Column ranges of the method's :meth:`FeatureMethod.pooled_pieces` in the pooled output,
        or None when it has none or a group's keys are not side by side there."""
        groups = method.pooled_pieces()
        if groups is None or any(k not in self._bag_slices for g in groups for k in g):
            return None
        blocks = []
        for g in groups:
            spans = [self._bag_slices[k] for k in g]
            if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
                return None
            blocks.append((spans[0][0], spans[-1][1]))
        return blocks

    def _combine_pooled(self, pooled: torch.Tensor, per_value: dict, lengths_of: list[torch.Tensor]) -> torch.Tensor:
        """The logical output from the pooled bag values laid out as ``self._bag_keys``."""
        batch = pooled.shape[0]
        pieces = [pooled] if len(self._split_sizes) <= 1 else list(torch.split(pooled, self._split_sizes, dim=1))
        parts: list[torch.Tensor] = []
        view: dict[str, torch.Tensor] | None = None
        for op, k, d, n, cols in self._runs:
            if op == "pieces":
                parts.append(self.methods[self._feature_names[k]].combine_pieces([pieces[i] for i in cols], lengths_of[k]))
                continue
            if op == "custom":
                if view is None:
                    view = {key: pieces[i] for key, i in self._custom_pieces.items()}
                name = self._feature_names[k]
                parts.append(self.methods[name].combine(view, per_value, lengths_of[k]))
                continue
            if isinstance(cols, int):
                x = pieces[cols]
            else:
                x = pooled.index_select(1, torch.tensor(cols, dtype=torch.int64, device=pooled.device))
            if op != "concat":
                # unbind: one backward node (a stack) rather than k zero-filled select gradients.
                probes = x.reshape(batch, n, k, d).unbind(2)
                out = probes[0]
                for p in probes[1:]:
                    out = out * p if op == "prod" else out + p
                x = out.reshape(batch, n * d)
            parts.append(x)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """Args:
            features (KeyedJaggedTensor): logical ids, keys including every feature of the collection.

        Returns:
            KeyedTensor: keys = the logical features, values ``(B, sum(D_f))``.
        """
        batch = features.stride()
        jts = features.to_dict()
        routed: dict[str, tuple[list[str], list[torch.Tensor], list[torch.Tensor]]] = {}
        lengths_of: list[torch.Tensor] = []
        for name in self._feature_names:
            jt = jts[name]
            lengths = jt.lengths()
            lengths_of.append(lengths)
            for keys, values, phys_lengths in self.methods[name].transform(jt.values(), lengths):
                k, v, n = routed.setdefault(self._destination[keys[0]], ([], [], []))
                k.extend(keys)
                v.append(values)
                n.append(phys_lengths)

        pooled_kt: KeyedTensor | None = None
        per_value = {}
        for dest, (keys, values, lengths) in routed.items():
            cat_values = values[0] if len(values) == 1 else torch.cat(values)
            cat_lengths = lengths[0] if len(lengths) == 1 else torch.cat(lengths)
            kjt = KeyedJaggedTensor(keys=keys, values=cat_values, lengths=cat_lengths, stride=batch)
            if dest == _BAGS:
                pooled_kt = self.embedding_bags(kjt)
            else:
                per_value.update(self.embeddings[dest](kjt))

        if pooled_kt is None or pooled_kt.keys() == self._bag_keys:
            # Pooled columns in table order (as built): vectorised combiners, no per-feature split.
            pooled = pooled_kt.values() if pooled_kt is not None else features.values().new_zeros((batch, 0), dtype=torch.float32)
            out = self._combine_pooled(pooled, per_value, lengths_of)
            if any(self._mean):
                scale = torch.stack(
                    [n.clamp(min=1).to(out.dtype) if mean else torch.ones_like(n, dtype=out.dtype) for n, mean in zip(lengths_of, self._mean)],
                    dim=1,
                )  # (B, F)
                out = out / torch.repeat_interleave(scale, torch.tensor(self._dims, device=scale.device), dim=1, output_size=out.shape[1])
            return KeyedTensor(keys=list(self._feature_names), length_per_key=list(self._dims), values=out)

        pooled_dict = pooled_kt.to_dict()
        outputs = []
        for name, lengths, mean in zip(self._feature_names, lengths_of, self._mean):
            out = self.methods[name].combine(pooled_dict, per_value, lengths)  # (B, D_f), sum-pooled
            if mean:
                out = out / lengths.clamp(min=1).unsqueeze(1).to(out.dtype)
            outputs.append(out)
        return KeyedTensor(keys=list(self._feature_names), length_per_key=list(self._dims), values=torch.cat(outputs, dim=1))

    def reset_parameters(self) -> None:
        """Re-initialise every table (with its plan's init bounds) and projection.

        Done here rather than by the inner collections' ``reset_parameters``, which skip
        everything when they were built on the meta device (they remember that device).
        """
        bounds = {t.name: (t.init_min, t.init_max) for t in self._tables}
        with torch.no_grad():
            for name, weight in self.table_weights().items():
                if not weight.is_meta:
                    weight.uniform_(*bounds[name])
        for m in self.methods.values():
            m.reset_parameters()

    @property
    def feature_names(self) -> list[str]:
        return list(self._feature_names)

    def embedding_dims(self) -> list[int]:
        return list(self._dims)

    def table_weights(self) -> dict[str, torch.Tensor]:
        """Physical table name -> weight tensor (unsharded collections)."""
        out: dict[str, torch.Tensor] = {}
        if self.embedding_bags is not None:
            out.update({n: m.weight for n, m in self.embedding_bags.embedding_bags.items()})
        for ec in self.embeddings.values():
            out.update({n: m.weight for n, m in ec.embeddings.items()})
        return out

    def plan(self) -> EmbeddingPlan:
        """Physical tables, per-feature transform / combiner and exact bytes."""
        features = []
        projections = []
        notes = list(self._notes)
        for name, mean in zip(self._feature_names, self._mean):
            m = self.methods[name]
            transform, combiner = m.describe()
            tables = tuple(t.name for t in self._tables if any(k.startswith(f"{name}__") for k in t.feature_names))
            rows = self._full_rows.get(name)
            features.append(
                FeaturePlan(
                    feature=name,
                    kind=m.kind,
                    output_dim=m.output_dim,
                    pooling="mean" if mean else "sum",
                    transform=transform,
                    combiner=combiner,
                    tables=tables,
                    full_bytes=rows * m.output_dim * 4 if rows else None,
                )
            )
            if hasattr(m, "projection_specs"):
                projections.extend(m.projection_specs())
            notes.extend(m.extra_notes())
        return EmbeddingPlan(features=tuple(features), tables=tuple(self._tables), projections=tuple(projections), notes=tuple(notes))
