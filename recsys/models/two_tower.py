"""Two-tower retrieval: towers over compressed collections, the sampled-softmax task, serving module.

    .venv/bin/python -m pytest tests/unit/models/test_two_tower.py -q

Three modules, kept apart as in TorchRec's ``examples/retrieval`` (``TwoTower``,
``TwoTowerTrainTask``, ``TwoTowerRetrieval``):

* :class:`TwoTower`: a user :class:`Tower` and an item :class:`Tower`. A tower is a
  :class:`~recsys.embeddings.CompressedEmbeddingBagCollection` over its features (``tower: user``
  resp. ``tower: item`` in the spec), the concatenation of their pooled vectors (and optional
  dense inputs), an MLP (ReLU between layers, the last layer linear) and L2 normalisation.
* :class:`TwoTowerTask`: the model + the loss; the module that training wraps in DMP.
* :class:`TwoTowerRetrieval`: serving: the user tower and a fixed ``(V, D)`` item-vector matrix,
  built from trained weights by :meth:`TwoTowerRetrieval.from_trained`.

**The loss** (:func:`sampled_softmax_loss`), for a batch of B (user, item) pairs with
normalised vectors ``u_i``, ``v_j`` and temperature T::

    logit[i, j] = <u_i, v_j> / T - log Q(item_j)          j over the B in-batch items
                                                          (+ M mixed negatives)
    loss = mean_i  -log softmax_j(logit[i, :])[i]

* **logQ correction** (Yi et al., RecSys 2019, "Sampling-bias-corrected neural modeling"): the
  in-batch candidates are a sample of the item distribution, so popular items are over-represented
  as negatives. ``Q(y)`` is the expected number of times item ``y`` is among a row's candidates:
  ``B * p(y)`` with ``p(y) = count(y) / sum(counts)`` the probability of ``y`` in one batch
  position (training counts from the vocabulary, zero counts clamped to 1), or ``1 / gap(y)``
  from the streaming estimator (:class:`StreamingFrequencyEstimator`, Yi et al.'s hashed
  step-gap estimate, for ``cardinality: raw`` items, whose vocabulary does not exist). The
  correction is applied to every column, the positive included (as in the paper).
* **mixed negatives** (Yang et al. 2020, "Mixed Negative Sampling"): M items drawn uniformly from
  the catalogue's N items, embedded by the item tower, appended as M extra columns. The candidate
  pool is then a mixture, so every column (in-batch or uniform) is corrected with the expected
  number of times its item is in the pool: ``Q(y) = B * p(y) + M / N``. (Correcting in-batch
  columns by ``log p`` and uniform columns by ``log 1/N`` separately would count an item that can
  come from both sources as if only one produced it.) Without mixed negatives ``Q = B p``, which
  differs from Yi et al.'s ``log p`` by the constant ``log B``: the same softmax.
* **accidental hits**: a column holding the row's own target item (``j != i`` with
  ``item_j == item_i``, in-batch or sampled) is removed from the denominator (logit -inf), so a
  popular item is never pushed away from its own user.
* **full softmax** (``loss: full_softmax``, :func:`full_softmax_loss`): instead of the B in-batch
  columns, EVERY catalogue item is a column (the item tower embeds all V rows each step, in the
  same one collection call as the batch's items): ``logit[i, j] = <u_i, v_j> / T`` over the
  catalogue, no logQ (nothing is sampled), no accidental hits (each item is one column). For
  catalogues of tens of thousands of items this is cheap on CPU and is the exact likelihood the
  sampled softmax approximates.
* **temperature**: fixed, or learnable through ``log T`` (a parameter; T stays positive).
* **SSL** (Yao et al. 2021, "Self-supervised Learning for Large-scale Item Recommendations"): two
  views of each batch item by feature masking with complementary sets (each item feature of each
  item is dropped, i.e. given an empty bag, in view 1 with probability ``ssl_mask_rate`` and in
  view 2 exactly when it is kept in view 1), both embedded by the item tower; InfoNCE between the
  views with its own temperature, the other items' views (same-item duplicates masked) as
  negatives. ``total = main + ssl_weight * ssl``. The paper's *correlated* masking picks the
  masked set by the features' mutual information; this is its random-feature-masking variant
  with complementary views (what two-feature catalogues reduce to anyway).

All item-tower inputs of a step (the batch's items, mixed negatives, both SSL views) go through
the item collection in ONE call, so a fused table optimizer sees one backward per table per step.

Shapes: ``B`` batch, ``M`` mixed negatives, ``D`` tower output dim, ``V`` catalogue rows.

**Tables of two collections.** Each tower builds its own collection, so tables are per tower.
Method tables are named after their (unique) feature, so they never collide. A ``unified`` group
read by features of BOTH towers gets one copy per tower, its tables named ``user__<group>__sharedT``
and ``item__<group>__sharedT`` (a group of one tower keeps its name). Sharing ONE physical table
between the towers (and a history feature reading ``item_id``'s table) would need one collection
over both towers' features; today a history feature (``history_item_id``) has its own table.

**What a training loop calls.** Build: ``build_tower_collections(spec, device="meta", counts=...)``
-> ``materialize_dense`` on each -> ``build_two_tower_model(config, spec, user_sparse=...,
item_sparse=..., device=...)`` -> ``build_two_tower_task(config, model, spec, counts=...,
catalogue=..., device=..., seed=...)``; the tables to plan are those of ``model.plans()``. Train:
``loss, out = task(batch)``. Evaluate (eval mode, same forward): ``out.user`` and
``out.item_ids`` (the targets) per batch, item vectors of the whole catalogue from
:func:`embed_items`, then :class:`recsys.retrieval_metrics.RetrievalEvaluator`.

Example::

    #        i = 0     i = 1    <-- batch index
    # "user_id"     [4]       [7]
    # "item_id"     [12]      [3]
    # "item_tags"   [2, 5]    []
    model = build_two_tower_model(TwoTowerConfig(), spec)
    task = build_two_tower_task(TwoTowerConfig(), model, spec, counts=counts)
    loss, out = task(batch)        # scalar, TwoTowerOutputs(user (B, D), item (B, D), ...)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Annotated, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.batch import Batch
from recsys.data.catalogue import ItemCatalogue
from recsys.embeddings import CompressedEmbeddingBagCollection, EmbeddingPlan, build_embedding_collection
from recsys.features.spec import DatasetSpec
from recsys.models.retrieval_loss import StreamingFrequencyEstimator, full_softmax_loss, sampled_softmax_loss, ssl_loss
from recsys.retrieval_metrics import exact_topk

__all__ = [
    "Tower",
    "TwoTower",
    "TwoTowerTask",
    "TwoTowerOutputs",
    "TwoTowerRetrieval",
    "TwoTowerConfig",
    "StreamingFrequencyEstimator",
    "full_softmax_loss",
    "sampled_softmax_loss",
    "ssl_loss",
    "tower_features",
    "build_tower_collections",
    "shared_history_features",
    "build_two_tower_model",
    "build_two_tower_task",
    "embed_items",
]


# -- model ------------------------------------------------------------------------------------


class Tower(nn.Module):
    """One tower: sparse module -> concat(pooled features [, dense]) -> MLP -> L2 normalisation.

    Args:
        sparse (nn.Module): ``KeyedJaggedTensor -> KeyedTensor`` with a key per name in ``feature_names``.
        feature_names (Sequence[str]): the tower's sparse features, in the MLP's input order.
        embedding_dims (Sequence[int]): ``D_f`` per feature.
        layer_sizes (Sequence[int]): MLP sizes; the last is the tower's output dim D.
        num_dense (int): dense inputs appended to the pooled features. Default 0.
        device (torch.device | str | None): where the MLP lives (``meta`` works).
        history (dict[str, tuple[str, str]] | None): features of ``feature_names`` NOT in ``sparse``
            that read another tower's table: ``{history feature: (item id feature, pooling)}``
            (``history_table: item``). Their vectors come from :meth:`attach_history_source`'s
            tower, pooled over the bag (``mean`` or ``sum``). Default: none.

    Raises:
        ValueError: no features, dims that do not match the names, or no layers.
    """

    def __init__(
        self,
        sparse: nn.Module,
        feature_names: Sequence[str],
        embedding_dims: Sequence[int],
        layer_sizes: Sequence[int],
        num_dense: int = 0,
        device: torch.device | str | None = None,
        history: dict[str, tuple[str, str]] | None = None,
    ):
        super().__init__()
        if not feature_names:
            raise ValueError("a tower needs at least one sparse feature")
        if len(embedding_dims) != len(feature_names):
            raise ValueError(f"embedding_dims: got {len(embedding_dims)} dims for {len(feature_names)} features {list(feature_names)}")
        if not layer_sizes:
            raise ValueError("layer_sizes: got []; give at least one size (the last is the output dim)")
        self.sparse = sparse
        self.feature_names = list(feature_names)
        self.num_dense = num_dense
        sizes = [sum(embedding_dims) + num_dense, *layer_sizes]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out, device=device))
            if i < len(layer_sizes) - 1:
                layers.append(nn.ReLU())
        self.mlp = nn.Sequential(*layers)
        self.output_dim = int(layer_sizes[-1])
        self.history = dict(history or {})
        # A plain list: the item tower is not a submodule of this one. copy.deepcopy copies the list
        # with its item tower (the same copy when the whole model is copied), so an unsharded copy
        # of the user tower alone (serving) still reads the item table.
        self._history_source: list[Tower] = []

    def attach_history_source(self, item_tower: "Tower") -> None:
        """The tower whose table the ``history`` features read (a reference, not a submodule: DMP
        shards that table once, under the item tower, and this tower reads ``item_tower.sparse`` as
        it stands at call time, sharded or not)."""
        self._history_source[:] = [item_tower]

    def history_kjt(self, kjt: KeyedJaggedTensor) -> KeyedJaggedTensor:
        """The ``history`` bags of ``kjt`` as rows of the item tower's KJT: keys the item tower's
        features, the item id feature holding the history, every other item feature empty.

        Stride ``len(history) * B`` (history feature major)."""
        source = self._history_source[0]
        batch = kjt.stride()
        per_key = {name: kjt[name] for name in self.history}
        values, lengths = [], []
        for key in source.feature_names:
            for name, (item_id, _) in self.history.items():
                if key == item_id:
                    values.append(per_key[name].values())
                    lengths.append(per_key[name].lengths())
                else:
                    lengths.append(torch.zeros(batch, dtype=torch.int32, device=kjt.values().device))
        return KeyedJaggedTensor(
            keys=list(source.feature_names), values=torch.cat(values), lengths=torch.cat(lengths).to(torch.int32),
            stride=batch * len(self.history),
        )

    def pool_history(self, pooled: dict[str, torch.Tensor], kjt: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
        """``{history feature: (B, D_f)}`` from the item collection's output on :meth:`history_kjt` rows
        (``pooled[item id]`` is the SUM over each bag, as the item id's table pools; ``mean`` divides)."""
        batch = kjt.stride()
        out = {}
        for i, (name, (item_id, pooling)) in enumerate(self.history.items()):
            rows = pooled[item_id][i * batch : (i + 1) * batch]  # (B, D)
            if pooling == "mean":
                lengths = kjt[name].lengths().clamp(min=1).to(rows.dtype)  # (B,)
                rows = rows / lengths[:, None]
            out[name] = rows
        return out

    def forward(
        self, kjt: KeyedJaggedTensor, dense: torch.Tensor | None = None, history: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Args:
            kjt (KeyedJaggedTensor): stride B, keys including every name in ``feature_names``.
            dense (torch.Tensor | None): ``(B, num_dense)`` when the tower has dense inputs.
            history (dict[str, torch.Tensor] | None): the ``history`` features' pooled ``(B, D_f)``
                when the caller already looked them up (the task does, in its one item-table call);
                None: looked up here through the history source.

        Returns:
            torch.Tensor: ``(B, D)``, unit L2 norm per row.
        """
        per_key = self.sparse(kjt).to_dict()
        if self.history:
            if history is None:
                hist_kjt = self.history_kjt(kjt)
                history = self.pool_history(self._history_source[0].sparse(hist_kjt).to_dict(), kjt)
            per_key = {**per_key, **history}
        return self.from_pooled(per_key, dense)

    def from_pooled(self, per_key: dict[str, torch.Tensor], dense: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D)`` unit vectors from the pooled ``(B, D_f)`` of every name in ``feature_names``."""
        parts = [per_key[name] for name in self.feature_names]  # each (B, D_f)
        if self.num_dense:
            if dense is None:
                raise ValueError(f"this tower has {self.num_dense} dense inputs; pass dense (B, {self.num_dense})")
            parts.append(dense)
        x = torch.cat(parts, dim=1)  # (B, sum(D_f) [+ num_dense])
        return F.normalize(self.mlp(x), dim=1)  # (B, D)


class TwoTower(nn.Module):
    """A user tower and an item tower with the same output dim D; scores are ``<u, v>``.

    Args:
        user_tower (Tower): over the ``tower: user`` features.
        item_tower (Tower): over the ``tower: item`` features.

    Raises:
        ValueError: the towers' output dims differ.
    """

    def __init__(self, user_tower: Tower, item_tower: Tower):
        super().__init__()
        if user_tower.output_dim != item_tower.output_dim:
            raise ValueError(
                f"user_layers ends in {user_tower.output_dim} but item_layers in {item_tower.output_dim}; "
                "the dot product needs the same last size for both towers"
            )
        self.user_tower = user_tower
        self.item_tower = item_tower

    @property
    def embedding_dim(self) -> int:
        return self.user_tower.output_dim

    def plans(self) -> dict[str, EmbeddingPlan]:
        """``{"user": plan, "item": plan}`` of the towers' collections (tables, exact bytes, ratio)."""
        return {"user": self.user_tower.sparse.plan(), "item": self.item_tower.sparse.plan()}

    def user_embeddings(self, kjt: KeyedJaggedTensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D)`` normalised user vectors from a KJT holding (at least) the user features."""
        return self.user_tower(kjt, dense)

    def item_embeddings(self, kjt: KeyedJaggedTensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D)`` normalised item vectors from a KJT holding (at least) the item features."""
        return self.item_tower(kjt, dense)

    def forward(self, user_kjt: KeyedJaggedTensor, item_kjt: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(user (B, D), item (B, D))``."""
        return self.user_tower(user_kjt), self.item_tower(item_kjt)


@torch.no_grad()
def embed_items(
    model: TwoTower, catalogue: ItemCatalogue, batch_size: int = 8192, device: torch.device | str | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``(V, D)`` item vectors of EVERY catalogue row (row i = item index i), in eval mode, chunked.

    Args:
        on_chunk: called with each chunk's number of items once it is embedded (progress).
    """
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(catalogue), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(catalogue)))
            out.append(model.item_embeddings(catalogue.kjt(rows, device=device)))
            if on_chunk is not None:
                on_chunk(int(rows.numel()))
    finally:
        model.train(was_training)
    return torch.cat(out)  # (V, D)


# The losses and the frequency estimator live in recsys.models.retrieval_loss (re-exported here).


# -- KJT helpers (no per-row Python) -----------------------------------------------------------


def _cat_rows(kjts: Sequence[KeyedJaggedTensor], keys: Sequence[str]) -> KeyedJaggedTensor:
    """Stack KJTs with the same keys along the batch: stride ``sum(strides)``, keys ``keys``."""
    if len(kjts) == 1 and list(kjts[0].keys()) == list(keys):
        return kjts[0]
    dicts = [k.to_dict() for k in kjts]
    values = [d[key].values() for key in keys for d in dicts]
    lengths = [d[key].lengths() for key in keys for d in dicts]
    return KeyedJaggedTensor(keys=list(keys), values=torch.cat(values), lengths=torch.cat(lengths), stride=sum(k.stride() for k in kjts))


def _drop_bags(kjt: KeyedJaggedTensor, drop: torch.Tensor) -> KeyedJaggedTensor:
    """``kjt`` with the bags where ``drop`` ``(F * B,)`` (key-major) is True emptied."""
    lengths = kjt.lengths()
    keep = ~drop
    value_keep = torch.repeat_interleave(keep, lengths)
    return KeyedJaggedTensor(keys=kjt.keys(), values=kjt.values()[value_keep], lengths=lengths * keep, stride=kjt.stride())


# -- task ---------------------------------------------------------------------------------------


@dataclass
class TwoTowerOutputs:
    """What :meth:`TwoTowerTask.forward` returns besides the loss (all detached).

    Attributes:
        user: ``(B, D)`` user vectors.
        item: ``(B, D)`` the rows' item vectors.
        item_ids: ``(B,)`` the rows' item ids (the evaluation targets).
        main_loss: the sampled-softmax loss (scalar).
        ssl_loss: the SSL loss (scalar; 0 without SSL).
        temperature: T in force.
    """

    user: torch.Tensor
    item: torch.Tensor
    item_ids: torch.Tensor
    main_loss: torch.Tensor
    ssl_loss: torch.Tensor
    temperature: torch.Tensor


class TwoTowerTask(nn.Module):
    """The model and the retrieval loss; ``forward(batch) -> (loss, outputs)``.

    Args:
        model (TwoTower): the towers.
        item_id_feature (str): the single-valued item id feature (accidental hits, logQ, negatives' ids).
        temperature (float): T, or its initial value when learnable. Default 0.05.
        learnable_temperature (bool): learn ``log T``. Default False.
        item_log_probs (torch.Tensor | None): ``(V,)`` ``log p(item)`` per item index (from the
            training counts); used for logQ when given.
        frequency_estimator (StreamingFrequencyEstimator | None): used for logQ when
            ``item_log_probs`` is None (raw-id items); updated on every training forward.
        mask_accidental_hits (bool): Default True.
        num_mixed_negatives (int): M uniform catalogue items per step. Default 0.
        catalogue (ItemCatalogue | None): where mixed negatives come from (needed when M > 0).
        ssl_weight (float): weight of the SSL loss; 0 turns it off. Default 0.
        ssl_temperature (float): the SSL InfoNCE temperature. Default 0.1.
        ssl_mask_rate (float): probability that view 1 drops an item feature (view 2 drops the rest). Default 0.5.
        full_softmax (bool): the loss is the softmax over every catalogue item (needs ``catalogue``;
            logQ and mixed negatives do not apply). Default False: the in-batch sampled softmax.
        seed (int): seeds the negatives' and masks' generator. Default 0.
        device (torch.device | str | None): where the temperature lives.

    In eval mode the same forward gives the evaluation outputs: no mixed negatives, no SSL, the
    streaming estimator is read but not updated, and the loss is the in-batch loss.
    Without ``item_log_probs`` and ``frequency_estimator`` there is no logQ correction.

    Raises:
        ValueError: M > 0 without a catalogue, or a catalogue without the item features.
    """

    def __init__(
        self,
        model: TwoTower,
        item_id_feature: str = "item_id",
        temperature: float = 0.05,
        learnable_temperature: bool = False,
        item_log_probs: torch.Tensor | None = None,
        frequency_estimator: StreamingFrequencyEstimator | None = None,
        mask_accidental_hits: bool = True,
        num_mixed_negatives: int = 0,
        catalogue: ItemCatalogue | None = None,
        ssl_weight: float = 0.0,
        ssl_temperature: float = 0.1,
        ssl_mask_rate: float = 0.5,
        full_softmax: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.model = model
        self.item_id_feature = item_id_feature
        self.user_features = list(model.user_tower.feature_names)
        self.item_features = list(model.item_tower.feature_names)
        if item_id_feature not in self.item_features:
            raise ValueError(f"item_id_feature: got {item_id_feature!r}, not an item tower feature {self.item_features}")
        if num_mixed_negatives and catalogue is None:
            raise ValueError(
                f"num_mixed_negatives: got {num_mixed_negatives} but no catalogue; "
                "pass the ItemCatalogue of items.parquet or set it to 0"
            )
        if full_softmax and (catalogue is None or num_mixed_negatives):
            raise ValueError(
                "full_softmax: every catalogue item is a negative, so it needs the catalogue and no mixed negatives; "
                f"got catalogue={'given' if catalogue is not None else 'None'}, num_mixed_negatives={num_mixed_negatives}"
            )
        if catalogue is not None:
            missing = [f for f in self.item_features if f not in catalogue.feature_names]
            if missing:
                raise ValueError(f"the item catalogue lacks item features {missing}; it has {catalogue.feature_names}")
        log_t = torch.tensor(math.log(temperature), dtype=torch.float32, device=device)
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        if item_log_probs is not None:
            self.register_buffer("item_log_probs", item_log_probs.to(torch.float32))
        else:
            self.item_log_probs = None
        self.frequency_estimator = frequency_estimator if item_log_probs is None else None
        self.mask_accidental_hits = mask_accidental_hits
        self.num_mixed_negatives = num_mixed_negatives
        self.catalogue = catalogue
        self.ssl_weight = ssl_weight
        self.ssl_temperature = ssl_temperature
        self.ssl_mask_rate = ssl_mask_rate
        self.full_softmax = full_softmax
        self._catalogue_rows = torch.arange(len(catalogue)) if full_softmax else None
        self._generator = torch.Generator().manual_seed(seed)
        self._permutation: tuple[tuple[str, ...], list[int]] | None = None

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    @property
    def logq_correction(self) -> bool:
        return self.item_log_probs is not None or self.frequency_estimator is not None

    def split_features(self, kjt: KeyedJaggedTensor) -> tuple[KeyedJaggedTensor, KeyedJaggedTensor]:
        """A batch's KJT (all features) -> ``(user KJT, item KJT)``: one permute and one split.

        Raises:
            ValueError: a tower feature is not a key of ``kjt``.
        """
        keys = tuple(kjt.keys())
        if self._permutation is None or self._permutation[0] != keys:
            missing = [f for f in self.user_features + self.item_features if f not in keys]
            if missing:
                raise ValueError(f"the batch lacks tower features {missing}; its keys are {list(keys)}")
            self._permutation = (keys, [keys.index(f) for f in self.user_features + self.item_features])
        user, item = kjt.permute(self._permutation[1]).split([len(self.user_features), len(self.item_features)])
        return user, item

    def expected_count(self, ids: torch.Tensor, batch_size: int, num_negatives: int = 0) -> torch.Tensor:
        """``(n,)`` Q: expected occurrences of each item among a row's candidates (module docstring)."""
        if self.item_log_probs is not None:
            q = batch_size * self.item_log_probs[ids].exp()
        else:
            q = self.frequency_estimator.expected_count(ids)
        if num_negatives:
            q = q + num_negatives / self.catalogue.num_sampleable
        return q

    def _embed(
        self, item_parts: list[KeyedJaggedTensor], user_kjt: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(item vectors of every row of item_parts, user vectors)``. With ``history_table: item``
        the user's history bags are rows of the SAME item-collection call (one lookup, one backward
        per table per step)."""
        user_tower, item_tower = self.model.user_tower, self.model.item_tower
        if not user_tower.history:
            return self.model.item_embeddings(_cat_rows(item_parts, self.item_features)), self.model.user_embeddings(user_kjt)
        rows = sum(k.stride() for k in item_parts)
        pooled = item_tower.sparse(_cat_rows([*item_parts, user_tower.history_kjt(user_kjt)], self.item_features)).to_dict()
        vectors = item_tower.from_pooled({name: v[:rows] for name, v in pooled.items()})
        history = user_tower.pool_history({name: v[rows:] for name, v in pooled.items()}, user_kjt)
        return vectors, user_tower(user_kjt, history=history)

    def _ssl_views(self, item_kjt: KeyedJaggedTensor) -> tuple[KeyedJaggedTensor, KeyedJaggedTensor]:
        num = len(self.item_features) * item_kjt.stride()
        drop1 = (torch.rand(num, generator=self._generator) < self.ssl_mask_rate).to(item_kjt.lengths().device)  # (F * B,)
        return _drop_bags(item_kjt, drop1), _drop_bags(item_kjt, ~drop1)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, TwoTowerOutputs]:
        """Returns ``(loss, outputs)``: ``main + ssl_weight * ssl`` (scalar) and :class:`TwoTowerOutputs`."""
        user_kjt, item_kjt = self.split_features(batch.sparse)
        size = item_kjt.stride()
        item_ids = item_kjt[self.item_id_feature].values()  # (B,)
        device = item_ids.device

        if self.full_softmax and self.training:
            return self._full_softmax_forward(user_kjt, item_kjt, item_ids)
        parts = [item_kjt]
        negative_ids = None
        num_negatives = self.num_mixed_negatives if self.training else 0
        if num_negatives:
            negative_rows = self.catalogue.sample(num_negatives, self._generator)
            negative_kjt = self.catalogue.kjt(negative_rows, device=device)
            negative_ids = negative_kjt[self.item_id_feature].values()  # (M,)
            parts.append(negative_kjt)
        use_ssl = self.ssl_weight > 0 and self.training
        if use_ssl:
            parts.extend(self._ssl_views(item_kjt))
        vectors, user = self._embed(parts, user_kjt)  # (B [+ M] [+ 2B], D), (B, D)
        item = vectors[:size]  # (B, D)
        negatives = vectors[size : size + num_negatives] if num_negatives else None  # (M, D)

        log_q = negative_log_q = None
        if self.logq_correction:
            if self.training and self.frequency_estimator is not None:
                self.frequency_estimator.update(item_ids)
            log_q = self.expected_count(item_ids, size, num_negatives).log()  # (B,)
            if negatives is not None:
                negative_log_q = self.expected_count(negative_ids, size, num_negatives).log()  # (M,)
        temperature = self.temperature
        main = sampled_softmax_loss(
            user, item, item_ids, temperature, log_q, negatives, negative_ids, negative_log_q, self.mask_accidental_hits
        )
        if use_ssl:
            start = size + num_negatives
            view1, view2 = vectors[start : start + size], vectors[start + size :]  # (B, D) each
            aux = ssl_loss(view1, view2, item_ids, self.ssl_temperature, self.mask_accidental_hits)
            loss = main + self.ssl_weight * aux
        else:
            aux = main.new_zeros(())
            loss = main
        out = TwoTowerOutputs(user.detach(), item.detach(), item_ids.detach(), main.detach(), aux.detach(), temperature.detach())
        return loss, out

    def _full_softmax_forward(
        self, user_kjt: KeyedJaggedTensor, item_kjt: KeyedJaggedTensor, item_ids: torch.Tensor
    ) -> tuple[torch.Tensor, TwoTowerOutputs]:
        """Training forward of ``full_softmax``: the catalogue's V rows (+ SSL views) in one item-tower call."""
        size = item_kjt.stride()
        parts = [self.catalogue.kjt(self._catalogue_rows, device=item_ids.device)]
        use_ssl = self.ssl_weight > 0
        if use_ssl:
            parts.extend(self._ssl_views(item_kjt))
        vectors, user = self._embed(parts, user_kjt)  # (V [+ 2B], D), (B, D)
        num_items = len(self.catalogue)
        catalogue = vectors[:num_items]  # (V, D)
        temperature = self.temperature
        main = full_softmax_loss(user, catalogue, item_ids, temperature, self.catalogue.first_item)
        if use_ssl:
            view1, view2 = vectors[num_items : num_items + size], vectors[num_items + size :]  # (B, D) each
            aux = ssl_loss(view1, view2, item_ids, self.ssl_temperature, self.mask_accidental_hits)
            loss = main + self.ssl_weight * aux
        else:
            aux = main.new_zeros(())
            loss = main
        item = catalogue[item_ids]  # (B, D)
        out = TwoTowerOutputs(user.detach(), item.detach(), item_ids.detach(), main.detach(), aux.detach(), temperature.detach())
        return loss, out


# -- serving ------------------------------------------------------------------------------------


class TwoTowerRetrieval(nn.Module):
    """Serving: the user tower and a fixed item-vector matrix; ``forward(kjt) -> (scores, items)``.

    Args:
        user_tower (Tower): the trained user tower (an unsharded copy).
        item_vectors (torch.Tensor): ``(V, D)`` one row per catalogue item index.
        k (int): items returned per user. Default 100.
        first_item (int): rows below this index (the OOV row 0) are never returned. Default 1.

    Top-k follows :func:`recsys.retrieval_metrics.exact_topk`: exact scores ``<u, v>``, ties to the
    lower item index.
    """

    def __init__(self, user_tower: Tower, item_vectors: torch.Tensor, k: int = 100, first_item: int = 1):
        super().__init__()
        if item_vectors.ndim != 2 or item_vectors.shape[1] != user_tower.output_dim:
            raise ValueError(f"item_vectors: got shape {tuple(item_vectors.shape)}; expected (V, {user_tower.output_dim})")
        self.user_tower = user_tower
        self.register_buffer("item_vectors", item_vectors.detach().clone())
        self.k = k
        self.first_item = first_item

    @classmethod
    def from_trained(
        cls,
        model: TwoTower,
        item_vectors: torch.Tensor | None = None,
        catalogue: ItemCatalogue | None = None,
        k: int = 100,
        batch_size: int = 8192,
    ) -> "TwoTowerRetrieval":
        """Copy the user tower of an UNSHARDED trained model; item vectors given or embedded from the catalogue.

        Raises:
            ValueError: neither ``item_vectors`` nor ``catalogue`` given.
        """
        if item_vectors is None:
            if catalogue is None:
                raise ValueError("from_trained needs item_vectors (V, D) or the ItemCatalogue to embed")
            item_vectors = embed_items(model, catalogue, batch_size)
        first_item = catalogue.first_item if catalogue is not None else 1
        retrieval = cls(copy.deepcopy(model.user_tower), item_vectors, k=k, first_item=first_item)
        return retrieval.eval()

    def user_embeddings(self, kjt: KeyedJaggedTensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, D)`` normalised user vectors."""
        return self.user_tower(kjt, dense)

    def forward(self, kjt: KeyedJaggedTensor, dense: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores (B, k), item indices (B, k))``, best first."""
        user = self.user_embeddings(kjt, dense)  # (B, D)
        return exact_topk(user, self.item_vectors, self.k, excluded_items=torch.arange(self.first_item))


# -- config and builders --------------------------------------------------------------------------


class TwoTowerConfig(BaseModel):
    """``model: {arch: two_tower, user_layers: [128, 64], item_layers: [128, 64], temperature: 0.05}``.

    Args:
        arch: the tag of the training config's model union.
        user_layers / item_layers: MLP sizes per tower; the last sizes must be equal (the embedding dim D).
        item_id_feature: the item tower's single-valued id feature.
        temperature: T (initial value when learnable).
        learnable_temperature: learn ``log T``.
        logq_correction: subtract ``log Q`` (module docstring).
        frequency_estimate: where Q comes from: ``counts`` (the item id's vocabulary counts),
            ``streaming`` (the hashed step-gap estimator) or ``auto`` (counts when the item id
            has a vocabulary, else streaming).
        streaming_num_buckets / streaming_alpha: the estimator's H and alpha.
        mask_accidental_hits: remove the row's own item from the other columns.
        loss: ``sampled_softmax`` (in-batch candidates, logQ, mixed negatives) or ``full_softmax``
            (every catalogue item is a candidate: exact, for catalogues of tens of thousands of items;
            logQ, accidental hits and mixed negatives do not apply).
        num_mixed_negatives: M uniform catalogue items per step (0: in-batch only).
        ssl_weight / ssl_temperature / ssl_mask_rate: the SSL auxiliary loss (0 weight: off).
        history_table: where a history feature (``history_of: <item id feature>`` in the spec)
            looks its items up: ``item``: in the item tower's item-id table (one table, one copy,
            one gradient; YouTube's / TorchRec's retrieval models; the history feature's own
            ``embedding_dim`` / ``compression`` are then unused) or ``own``: a table of its own.
        user_id_feature: the user tower's single-valued id feature (whose training items
            evaluation can exclude).
        eval_ks: the cut-offs of the retrieval metrics.
        eval_protocol: ``per_row`` (one query per held-out interaction) or ``per_user`` (one query
            per user with all of the user's held-out items: the LightGCN / RecBole convention);
            see ``docs/evaluation.md``.
        eval_exclude: the splits whose items leave a user's ranking at test time: ``[train]``,
            ``[train, validation]``, or ``[]`` (the synthetic oracle's protocol, which excludes
            nothing). Validation excludes at most the training items. A target always stays ranked.
        baselines: classic methods ranked beside the model on the same rows
            (:data:`recsys.baselines.BASELINES`: ``popularity``, ``itemknn``, ``als``).
        baseline_max_items: above this many catalogue items, ``itemknn`` and ``als`` are skipped
            (their fit would cost more than the run).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Literal["two_tower"]
    user_layers: tuple[Annotated[int, Field(ge=1)], ...] = Field((128, 64), min_length=1)
    item_layers: tuple[Annotated[int, Field(ge=1)], ...] = Field((128, 64), min_length=1)
    item_id_feature: str = "item_id"
    temperature: Annotated[float, Field(gt=0.0)] = 0.05
    learnable_temperature: bool = False
    logq_correction: bool = True
    frequency_estimate: Literal["auto", "counts", "streaming"] = "auto"
    streaming_num_buckets: Annotated[int, Field(ge=1)] = 1 << 20
    streaming_alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    mask_accidental_hits: bool = True
    loss: Literal["sampled_softmax", "full_softmax"] = "sampled_softmax"
    num_mixed_negatives: Annotated[int, Field(ge=0)] = 0
    ssl_weight: Annotated[float, Field(ge=0.0)] = 0.0
    ssl_temperature: Annotated[float, Field(gt=0.0)] = 0.1
    ssl_mask_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    history_table: Literal["own", "item"] = "own"
    user_id_feature: str = "user_id"
    eval_ks: tuple[Annotated[int, Field(ge=1)], ...] = Field((10, 20, 50, 100), min_length=1)
    eval_protocol: Literal["per_row", "per_user"] = "per_row"
    eval_exclude: tuple[Literal["train", "validation"], ...] = ("train",)
    baselines: tuple[str, ...] = ("popularity", "itemknn", "als")
    baseline_max_items: Annotated[int, Field(ge=1)] = 300_000

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data):
        if isinstance(data, dict) and "eval_exclude_seen" in data:
            value = data["eval_exclude_seen"]
            raise ValueError(
                f"eval_exclude_seen: got {value!r}; this key is now eval_exclude, a list of splits: "
                f"write `eval_exclude: {'[train]' if value else '[]'}` instead"
            )
        return data

    @model_validator(mode="after")
    def _eval_choices(self) -> "TwoTowerConfig":
        from recsys.baselines import BASELINES

        if self.eval_exclude not in ((), ("train",), ("train", "validation")):
            raise ValueError(
                f"eval_exclude: got {list(self.eval_exclude)}; allowed: [train], [train, validation] "
                "(test also leaves out the validation items) or [] (nothing excluded)"
            )
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown or len(set(self.baselines)) != len(self.baselines):
            raise ValueError(
                f"baselines: got {list(self.baselines)}; give distinct names from {sorted(BASELINES)} "
                "(or [] for none)"
            )
        return self

    @model_validator(mode="after")
    def _full_softmax_alone(self) -> "TwoTowerConfig":
        if self.loss == "full_softmax" and self.num_mixed_negatives:
            raise ValueError(
                f"num_mixed_negatives: got {self.num_mixed_negatives} with loss: full_softmax, whose candidates are "
                "already every catalogue item; set num_mixed_negatives: 0 or loss: sampled_softmax"
            )
        return self

    @model_validator(mode="after")
    def _same_output_dim(self) -> "TwoTowerConfig":
        if self.user_layers[-1] != self.item_layers[-1]:
            raise ValueError(
                f"user_layers ends in {self.user_layers[-1]} but item_layers in {self.item_layers[-1]}; "
                "give both towers the same last size (the embedding dim)"
            )
        return self


def tower_features(spec: DatasetSpec) -> tuple[list[str], list[str]]:
    """``(user features, item features)``: the spec's sparse features with ``tower: user`` / ``item``.

    Raises:
        ValueError: a tower without features.
    """
    user = [f.name for f in spec.sparse if f.tower == "user"]
    item = [f.name for f in spec.sparse if f.tower == "item"]
    for name, names in (("user", user), ("item", item)):
        if not names:
            raise ValueError(
                f"feature spec {spec.name!r} has no sparse feature with tower: {name}; a two-tower model needs "
                f"at least one per tower (give features `tower: {name}`)"
            )
    return user, item


def _tower_spec(spec: DatasetSpec, tower: str, shared_groups: set[str]) -> DatasetSpec:
    """The spec with each group in ``shared_groups`` renamed ``<tower>__<group>`` (its tables follow)."""
    if not shared_groups:
        return spec
    rename = {g: f"{tower}__{g}" for g in shared_groups}
    features = [
        f.model_copy(update={"compression": f.compression.model_copy(update={"group": rename[f.compression.group]})})
        if f.kind == "sparse" and f.compression.kind == "unified" and f.compression.group in rename
        else f
        for f in spec.features
    ]
    groups = [g.model_copy(update={"name": rename.get(g.name, g.name)}) for g in spec.groups]
    return spec.model_copy(update={"features": features, "groups": groups})


def shared_history_features(spec: DatasetSpec, item_id_feature: str = "item_id") -> dict[str, tuple[str, str]]:
    """``{history feature: (item id feature, pooling)}``: the user features with ``history_of: item_id_feature``."""
    return {
        f.name: (item_id_feature, f.pooling)
        for f in spec.sparse
        if f.tower == "user" and getattr(f, "history_of", None) == item_id_feature
    }


def build_tower_collections(
    spec: DatasetSpec,
    *,
    device: torch.device | str | None = None,
    counts: dict[str, np.ndarray] | None = None,
    history_table: str = "own",
    item_id_feature: str = "item_id",
) -> tuple[CompressedEmbeddingBagCollection, CompressedEmbeddingBagCollection]:
    """``(user collection, item collection)`` over each tower's features (``"meta"`` for sharding).

    A unified group read by both towers is built once per tower, named ``user__<group>`` and
    ``item__<group>`` (module docstring). With ``history_table="item"`` the user collection leaves
    out the history features (they read ``item_id_feature``'s table in the item collection).
    """
    user, item = tower_features(spec)
    if history_table == "item":
        shared = shared_history_features(spec, item_id_feature)
        user = [n for n in user if n not in shared]
        if not user:
            raise ValueError(
                f"history_table: item leaves the user tower no table of its own (its features {list(shared)} all read "
                f"{item_id_feature}'s); give users another feature (user_id) or use history_table: own"
            )
    by_name = {f.name: f for f in spec.sparse}

    def groups_of(names: list[str]) -> set[str]:
        return {by_name[n].compression.group for n in names if by_name[n].compression.kind == "unified"}

    shared = groups_of(user) & groups_of(item)
    return (
        build_embedding_collection(_tower_spec(spec, "user", shared), device=device, counts=counts, features=user),
        build_embedding_collection(_tower_spec(spec, "item", shared), device=device, counts=counts, features=item),
    )


def build_two_tower_model(
    config: TwoTowerConfig,
    spec: DatasetSpec,
    *,
    user_sparse: nn.Module | None = None,
    item_sparse: nn.Module | None = None,
    device: torch.device | str | None = None,
    counts: dict[str, np.ndarray] | None = None,
) -> TwoTower:
    """Build :class:`TwoTower` for a data set's towers around two sparse modules.

    Args:
        config: the ``model`` section (``arch: two_tower``).
        spec: the resolved feature spec.
        user_sparse / item_sparse: the towers' ``KeyedJaggedTensor -> KeyedTensor`` modules; default
            :func:`build_tower_collections` on ``device``.
        device: where the MLPs (and default collections) are built (``"meta"`` works).
        counts: vocab counts for the default collections (mixed_dim).

    Raises:
        ValueError: a tower without features; an item id feature that is not a single-valued item feature.
    """
    user, item = tower_features(spec)
    by_name = {f.name: f for f in spec.sparse}
    id_feature = by_name.get(config.item_id_feature)
    if id_feature is None or id_feature.tower != "item" or id_feature.multi_valued:
        raise ValueError(
            f"model.item_id_feature: got {config.item_id_feature!r}; it must be a single-valued sparse feature with "
            f"tower: item, one of {[n for n in item if not by_name[n].multi_valued]}"
        )
    history = shared_history_features(spec, config.item_id_feature) if config.history_table == "item" else {}
    if user_sparse is None or item_sparse is None:
        built_user, built_item = build_tower_collections(
            spec, device=device, counts=counts, history_table=config.history_table, item_id_feature=config.item_id_feature
        )
        user_sparse = user_sparse if user_sparse is not None else built_user
        item_sparse = item_sparse if item_sparse is not None else built_item
    # Dense features carry no tower in the spec yet, so the towers take none.
    user_dims = [by_name[history[n][0] if n in history else n].embedding_dim for n in user]
    user_tower = Tower(user_sparse, user, user_dims, config.user_layers, device=device, history=history)
    item_tower = Tower(item_sparse, item, [by_name[n].embedding_dim for n in item], config.item_layers, device=device)
    if history:
        user_tower.attach_history_source(item_tower)
    return TwoTower(user_tower, item_tower)


def build_two_tower_task(
    config: TwoTowerConfig,
    model: TwoTower,
    spec: DatasetSpec,
    *,
    counts: dict[str, np.ndarray] | None = None,
    catalogue: ItemCatalogue | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> TwoTowerTask:
    """Wrap ``model`` with the loss the config describes.

    Args:
        counts: training vocab counts (``layout.vocab_counts``); ``counts[item_id_feature]`` gives Q.
        catalogue: needed for mixed negatives and the full softmax.
        device: where the task's buffers live.
        seed: the negatives' and masks' generator seed (e.g. ``train.seed`` + rank).

    Raises:
        ValueError: ``frequency_estimate: counts`` without counts (or for a raw-id item), mixed
            negatives without a catalogue or for raw-id items, SSL with a one-feature item tower,
            a catalogue without every item feature.
    """
    id_feature = spec.feature(config.item_id_feature)
    if config.num_mixed_negatives and not id_feature.has_vocab:
        raise ValueError(
            f"model.num_mixed_negatives: got {config.num_mixed_negatives} but {config.item_id_feature} has cardinality 'raw': "
            "mixed negatives come from items.parquet, which indexes items by vocabulary; set num_mixed_negatives: 0"
        )
    if config.ssl_weight > 0 and len(model.item_tower.feature_names) < 2:
        raise ValueError(
            f"model.ssl_weight: got {config.ssl_weight} but the item tower has one feature {model.item_tower.feature_names}; "
            "the SSL views mask complementary feature sets, so give items at least two features or set ssl_weight: 0"
        )
    log_probs = estimator = None
    if config.logq_correction:
        mode = config.frequency_estimate
        if mode == "auto":
            mode = "counts" if id_feature.has_vocab else "streaming"
        if mode == "counts":
            item_counts = (counts or {}).get(config.item_id_feature)
            if item_counts is None:
                raise ValueError(
                    f"model.frequency_estimate: 'counts' needs the training counts of {config.item_id_feature} "
                    "(layout.vocab_counts); pass counts, or use frequency_estimate: streaming"
                )
            c = torch.as_tensor(np.maximum(np.asarray(item_counts, np.float64), 1.0))  # zero counts -> 1
            log_probs = (c / c.sum()).log().to(torch.float32).to(device)
        else:
            estimator = StreamingFrequencyEstimator(config.streaming_num_buckets, config.streaming_alpha, device=device)
    return TwoTowerTask(
        model,
        item_id_feature=config.item_id_feature,
        temperature=config.temperature,
        learnable_temperature=config.learnable_temperature,
        item_log_probs=log_probs,
        frequency_estimator=estimator,
        mask_accidental_hits=config.mask_accidental_hits,
        num_mixed_negatives=config.num_mixed_negatives,
        catalogue=catalogue,
        ssl_weight=config.ssl_weight,
        ssl_temperature=config.ssl_temperature,
        ssl_mask_rate=config.ssl_mask_rate,
        full_softmax=config.loss == "full_softmax",
        seed=seed,
        device=device,
    )
