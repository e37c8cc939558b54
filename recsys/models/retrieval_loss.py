"""Losses of two-tower retrieval: the in-batch sampled softmax (logQ, accidental hits, mixed
negatives), the full softmax over the whole catalogue, the SSL auxiliary loss and the streaming
item-frequency estimator.

    .venv/bin/python -m pytest tests/unit/models/test_two_tower.py -q

The formulas and the choices behind them are in :mod:`recsys.models.two_tower`'s docstring;
:class:`~recsys.models.two_tower.TwoTowerTask` calls these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recsys.embeddings.hashing import hash_ids, stable_seed

__all__ = ["StreamingFrequencyEstimator", "full_softmax_loss", "sampled_softmax_loss", "ssl_loss"]


class StreamingFrequencyEstimator(nn.Module):
    """Yi et al.'s hashed step-gap estimator of how often an item occurs (raw-id items).

    Per hash bucket ``h`` it keeps ``A[h]``, the last step the bucket was seen, and ``B[h]``, the
    estimated gap in steps between two sightings. At each training step ``t = 1, 2, ...``, for the
    buckets of the step's items (each bucket once, however many of its items the batch holds)::

        B[h] <- (1 - alpha) * B[h] + alpha * (t - A[h])
        A[h] <- t

    and the expected number of occurrences of an item per batch is ``1 / B[h(item)]``. The state
    starts at ``A = 0`` and ``B = initial_gap``, so an item first seen at step t gets
    ``B = (1 - alpha) initial_gap + alpha t``. Ids hash with :func:`recsys.embeddings.hashing.hash_ids`
    (seed from the name ``"frequency"``); distinct items of one bucket share an estimate.

    Args:
        num_buckets (int): H, the size of A and B.
        alpha (float): the moving average's step, in (0, 1].
        initial_gap (float): B before an item is seen. Default 1.
        device (torch.device | str | None): where the state lives.

    Counts per batch, not per position: an item that occurs several times in every batch is
    estimated at one occurrence per batch (the paper's estimator has the same bias).
    """

    def __init__(self, num_buckets: int, alpha: float = 0.01, initial_gap: float = 1.0, device: torch.device | str | None = None):
        super().__init__()
        if num_buckets < 1:
            raise ValueError(f"num_buckets: got {num_buckets}; give a positive number of buckets")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha: got {alpha}; the moving-average step must lie in (0, 1]")
        self.num_buckets = num_buckets
        self.alpha = alpha
        self.seed = stable_seed("frequency")
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("last_step", torch.zeros(num_buckets, dtype=torch.int64, device=device))
        self.register_buffer("gap", torch.full((num_buckets,), float(initial_gap), dtype=torch.float64, device=device))

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """One training step: advance t and record the buckets of ``ids`` (any int64 ids)."""
        self.step += 1
        buckets = torch.unique(hash_ids(ids.to(torch.int64), self.seed, self.num_buckets))
        seen_gap = (self.step - self.last_step[buckets]).to(torch.float64)
        self.gap[buckets] = (1.0 - self.alpha) * self.gap[buckets] + self.alpha * seen_gap
        self.last_step[buckets] = self.step

    def expected_count(self, ids: torch.Tensor) -> torch.Tensor:
        """``(n,)`` float32 estimated occurrences per batch, ``1 / B[h(id)]``."""
        gap = self.gap[hash_ids(ids.to(torch.int64), self.seed, self.num_buckets)]
        return (1.0 / gap.clamp(min=1e-12)).to(torch.float32)


def sampled_softmax_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    log_q: torch.Tensor | None = None,
    negatives: torch.Tensor | None = None,
    negative_ids: torch.Tensor | None = None,
    negative_log_q: torch.Tensor | None = None,
    mask_accidental_hits: bool = True,
) -> torch.Tensor:
    """In-batch sampled softmax (row i's positive is column i), see the module docstring.

    Args:
        user (torch.Tensor): ``(B, D)`` user vectors.
        item (torch.Tensor): ``(B, D)`` the rows' positive item vectors (the in-batch candidates).
        item_ids (torch.Tensor): ``(B,)`` item ids (equal ids = the same item, for accidental hits).
        temperature (torch.Tensor | float): T > 0; logits are ``<u, v> / T``.
        log_q (torch.Tensor | None): ``(B,)`` ``log Q`` of the in-batch columns, subtracted; None: no correction.
        negatives (torch.Tensor | None): ``(M, D)`` extra negative item vectors (mixed negatives).
        negative_ids (torch.Tensor | None): ``(M,)`` their ids.
        negative_log_q (torch.Tensor | None): ``(M,)`` their ``log Q`` (needed when ``log_q`` is given).
        mask_accidental_hits (bool): drop columns ``j != i`` holding row i's item. Default True.

    Returns:
        torch.Tensor: the mean over rows of ``-log softmax(logits)[i, i]`` (scalar).
    """
    batch = user.shape[0]
    logits = user @ item.T  # (B, B)
    ids = item_ids
    if negatives is not None:
        logits = torch.cat([logits, user @ negatives.T], dim=1)  # (B, B + M)
        ids = torch.cat([item_ids, negative_ids])  # (B + M,)
    logits = logits / temperature
    if log_q is not None:
        column_log_q = log_q if negatives is None else torch.cat([log_q, negative_log_q])  # (B + M,)
        logits = logits - column_log_q[None, :]
    if mask_accidental_hits:
        hit = item_ids[:, None] == ids[None, :]  # (B, B + M)
        hit[:, :batch].fill_diagonal_(False)  # the positive stays
        logits = logits.masked_fill(hit, float("-inf"))
    target = torch.arange(batch, device=user.device)
    return F.cross_entropy(logits, target)


def full_softmax_loss(
    user: torch.Tensor, catalogue: torch.Tensor, item_ids: torch.Tensor, temperature: torch.Tensor | float, first_item: int = 1
) -> torch.Tensor:
    """Softmax over EVERY catalogue item: row i's positive is item ``item_ids[i]``, all other items its negatives.

    ``logit[i, j] = <u_i, v_j> / T`` for the catalogue rows ``j >= first_item`` (rows below, the OOV
    row 0, are never candidates); ``loss = mean_i -log softmax_j(logit[i, :])[item_ids[i]]``. The
    exact likelihood the sampled softmax estimates: no sampling, so no sampling bias and no logQ
    correction; every item gets a gradient at every step. Cost per step: the item tower over the
    V rows and a ``(B, V)`` matmul, cheap on CPU for tens of thousands of items.

    Args:
        user (torch.Tensor): ``(B, D)`` user vectors.
        catalogue (torch.Tensor): ``(V, D)`` vectors of every catalogue row (row j = item index j).
        item_ids (torch.Tensor): ``(B,)`` the rows' item indices, in ``[first_item, V)``.
        temperature (torch.Tensor | float): T > 0.
        first_item (int): rows below it leave the softmax. Default 1.

    Returns:
        torch.Tensor: the mean cross-entropy (scalar).

    Raises:
        ValueError: an item index outside ``[first_item, V)`` (an item missing from the catalogue).
    """
    num_items = catalogue.shape[0]
    if item_ids.numel() and (int(item_ids.min()) < first_item or int(item_ids.max()) >= num_items):
        bad = item_ids[(item_ids < first_item) | (item_ids >= num_items)][0]
        raise ValueError(
            f"full softmax: item index {int(bad)} is not a catalogue item [{first_item}, {num_items}); "
            "items.parquet must hold every item the training rows name"
        )
    logits = user @ catalogue.T / temperature  # (B, V)
    if first_item:
        logits[:, :first_item] = float("-inf")
    return F.cross_entropy(logits, item_ids)


def ssl_loss(
    view1: torch.Tensor, view2: torch.Tensor, item_ids: torch.Tensor, temperature: float, mask_duplicates: bool = True
) -> torch.Tensor:
    """InfoNCE between two views of the same B items: row i's positive is ``view2[i]``.

    Args:
        view1, view2 (torch.Tensor): ``(B, D)`` normalised item vectors of the two views.
        item_ids (torch.Tensor): ``(B,)``; other rows of the same item are masked when ``mask_duplicates``.
        temperature (float): the SSL temperature.
    """
    logits = view1 @ view2.T / temperature  # (B, B)
    if mask_duplicates:
        same = item_ids[:, None] == item_ids[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(view1.shape[0], device=view1.device))


