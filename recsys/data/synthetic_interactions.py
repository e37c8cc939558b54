"""Synthetic user-item interactions from planted latent factors, for two-tower retrieval.

    recsys synth interactions --out data/synthetic_interactions
    recsys synth interactions --out /tmp/ia --rows 50000 --users 2000 --items 1000 --seed 3

The planted model (``features/synthetic_interactions.yaml`` columns):

* each user has a segment (16, uniform) and a factor ``u = centre[segment] + spread * noise``;
  each item a category (50, uniform), a factor ``v = centre[category] + spread * noise`` and 0-5
  tags, mostly from its category's own tags: side features carry part of the factor signal;
* item popularity is Zipf-skewed: ``pop(item) = rank(item)^-item_zipf`` over a random ranking;
* each interaction picks a user by Zipf-skewed activity, then an item with
  ``P(item | user) proportional to pop(item) * exp(<u, v> / tau)`` (exact inverse-CDF sampling
  over all items, per block of users); label 1.0; timestamps strictly increase.

Split by time, 80 / 10 / 10. The oracle ranks all items for a user by the true
``log pop(item) + <u, v> / tau`` (no exclusion of seen items) and reports recall@10 / @100 of
the validation and test interactions, next to a popularity-only ranking.
Memory is O(rows) int64 plus one ``(block_users, items)`` score matrix.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from recsys import metrics
from recsys.data.synthetic import check_positive_int, split_rows, zipf_ranks
from recsys.data.writer import DatasetWriter
from recsys.features.spec import DatasetSpec, builtin_spec

RECALL_AT: tuple[int, ...] = (10, 100)


@dataclass(frozen=True)
class InteractionSettings:
    """Knobs of the planted interaction model (recorded in the manifest under ``generator``).

    Args:
        dim: latent factor dimension. Default 16.
        tau: temperature of the affinity ``<u, v> / tau``; smaller = more personal. Default 0.15.
        spread: noise scale of a factor around its cluster centre (centre scale 1). Default 0.7.
        item_zipf: popularity exponent. Default 0.8.
        user_zipf: activity exponent of the user draw. Default 0.8.
        own_tag_rate: probability that an item tag comes from its category's tags. Default 0.8.
        block_users: users per score matrix (memory ``block_users * items`` floats). Default 512.
        chunk_rows: rows per chunk handed to the writer. Default 200000.
        start_time: first timestamp (seconds). Default 1700000000.
        mean_gap: mean seconds between interactions. Default 30.
    """

    dim: int = 16
    tau: float = 0.15
    spread: float = 0.7
    item_zipf: float = 0.8
    user_zipf: float = 0.8
    own_tag_rate: float = 0.8
    block_users: int = 512
    chunk_rows: int = 200_000
    start_time: int = 1_700_000_000
    mean_gap: int = 30


_TAG_LENGTH_P = (0.05, 0.2, 0.3, 0.25, 0.12, 0.08)  # P(0 .. 5 tags)


class InteractionModel:
    """The planted users, items and affinity of one ``(seed, users, items, settings)``.

    Attributes:
        user_factors: ``(U, dim)``; user_segment: ``(U,)`` in ``[0, segments)``.
        item_factors: ``(I, dim)``; item_category: ``(I,)``; log_popularity: ``(I,)``.
        tag_offsets, tag_values: item ``i``'s tags are ``tag_values[tag_offsets[i]:tag_offsets[i + 1]]``.
    """

    def __init__(self, seed: int, users: int, items: int, segments: int, categories: int, tags: int,
                 settings: InteractionSettings = InteractionSettings()):
        self.settings = settings
        self.users, self.items = users, items
        rng = np.random.default_rng([seed, 0])
        d = settings.dim
        seg_centres = rng.standard_normal((segments, d)) / np.sqrt(d)  # (S, d)
        cat_centres = rng.standard_normal((categories, d)) / np.sqrt(d)  # (C, d)
        self.user_segment = rng.integers(0, segments, users)  # (U,)
        user_noise = rng.standard_normal((users, d)) / np.sqrt(d)  # (U, d)
        self.user_factors = seg_centres[self.user_segment] + settings.spread * user_noise  # (U, d)
        self.item_category = rng.integers(0, categories, items)  # (I,)
        item_noise = rng.standard_normal((items, d)) / np.sqrt(d)  # (I, d)
        self.item_factors = cat_centres[self.item_category] + settings.spread * item_noise  # (I, d)
        pop_rank = rng.permutation(items) + 1  # (I,) rank 1 = most popular
        self.log_popularity = -settings.item_zipf * np.log(pop_rank)  # (I,)
        self.user_activity_order = rng.permutation(users)  # activity rank r -> user index
        lengths = rng.choice(len(_TAG_LENGTH_P), size=items, p=_TAG_LENGTH_P)  # (I,)
        self.tag_offsets = np.concatenate([[0], np.cumsum(lengths)])  # (I + 1,)
        owner = np.repeat(self.item_category, lengths)  # (T,)
        per_category = max(tags // categories, 1)
        own = (owner * per_category + rng.integers(0, per_category, owner.size)) % tags  # (T,)
        self.tag_values = np.where(rng.random(owner.size) < settings.own_tag_rate, own, rng.integers(0, tags, owner.size))
        # Scores in float32: twice as fast over the (users, items) matrix; the ranking is the model's.
        self.user_factors = self.user_factors.astype(np.float32)
        self.item_factors = self.item_factors.astype(np.float32)
        self.log_popularity = self.log_popularity.astype(np.float32)

    def scores(self, user_lo: int, user_hi: int) -> np.ndarray:
        """True log-affinity ``log pop(item) + <u, v> / tau`` of users ``[user_lo, user_hi)``: ``(B, I)``."""
        affinity = self.user_factors[user_lo:user_hi] @ self.item_factors.T  # (B, I)
        return self.log_popularity[None, :] + affinity / np.float32(self.settings.tau)

    def item_tags(self, items: np.ndarray) -> pa.ListArray:
        """The tag lists of ``items`` (``(n,)`` indices) as one list<int64> array."""
        starts = self.tag_offsets[items]  # (n,)
        lengths = self.tag_offsets[items + 1] - starts  # (n,)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)  # (n + 1,)
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])  # (L,)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(self.tag_values[gather], pa.int64()))

    def sample(self, rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``rows`` interactions; also ranks each user's top ``max(RECALL_AT)`` items.

        Returns:
            ``(user (rows,), item (rows,), top_items (U, K))``, top items in descending true score.
        """
        s = self.settings
        user = self.user_activity_order[zipf_ranks(rng, rows, self.users, s.user_zipf) - 1]  # (rows,)
        item = np.zeros(rows, np.int64)  # (rows,)
        k = min(max(RECALL_AT), self.items)
        top = np.zeros((self.users, k), np.int64)  # (U, K)
        order = np.argsort(user, kind="stable")  # (rows,)
        sorted_user = user[order]  # (rows,)
        for lo_user in range(0, self.users, s.block_users):
            hi_user = min(lo_user + s.block_users, self.users)
            score = self.scores(lo_user, hi_user)  # (B, I)
            part = np.argpartition(-score, k - 1, axis=1)[:, :k]  # (B, K) unordered
            part_score = np.take_along_axis(score, part, axis=1)  # (B, K)
            top[lo_user:hi_user] = np.take_along_axis(part, np.argsort(-part_score, axis=1, kind="stable"), axis=1)
            lo, hi = np.searchsorted(sorted_user, [lo_user, hi_user])
            if lo == hi:
                continue
            cdf = np.cumsum(np.exp(score - score.max(axis=1, keepdims=True)), axis=1, dtype=np.float64)  # (B, I)
            cdf /= cdf[:, -1:]
            local = sorted_user[lo:hi] - lo_user  # (m,) row of each draw in this block
            # One searchsorted over all rows of the block: row b's CDF is shifted to (b, b + 1].
            flat = (cdf + np.arange(hi_user - lo_user)[:, None]).ravel()  # (B * I,)
            pos = np.searchsorted(flat, local + rng.random(hi - lo), side="right")  # (m,)
            item[order[lo:hi]] = np.clip(pos - local * self.items, 0, self.items - 1)
        return user, item, top


def _recalls(top: np.ndarray, items: np.ndarray) -> dict[str, float]:
    return {str(k): metrics.recall_at_k(top[:, :k], items) for k in RECALL_AT if k <= top.shape[1]}


def generate_interactions(
    out_dir: str | Path,
    *,
    rows: int,
    seed: int = 0,
    users: int = 20_000,
    items: int = 10_000,
    settings: InteractionSettings = InteractionSettings(),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate an interactions data set through :class:`DatasetWriter` with its oracle recall.

    Args:
        out_dir: output folder (the ingest layout, see :mod:`recsys.data.layout`).
        rows: interactions, split 80 / 10 / 10 by time; at least 10.
        seed: non-negative seed. Default 0.
        users: number of users, at most the spec's ``user_id`` cardinality - 1. Default 20000.
        items: number of items, at most the spec's ``item_id`` cardinality - 1. Default 10000.
        settings: planted-model knobs. Default :class:`InteractionSettings`.
        log: called with progress lines. Default: silent.

    Returns:
        The manifest; ``oracle`` / ``oracle_validation`` hold the true model's recall@k.

    Raises:
        ValueError: a count out of range or a negative seed (the message names the flag).
    """
    t0 = time.perf_counter()
    spec: DatasetSpec = builtin_spec("synthetic_interactions")
    card = {f.name: int(f.cardinality) for f in spec.sparse}
    check_positive_int("--rows", rows, 10, "train, validation and test each need rows")
    check_positive_int("--seed", seed, 0, "numpy seeds are non-negative")
    check_positive_int("--users", users, 2, "at least two users")
    check_positive_int("--items", items, 2, "at least two items")
    for flag, value, feature in (("--users", users, "user_id"), ("--items", items, "item_id")):
        if value > card[feature] - 1:
            raise ValueError(
                f"invalid {flag} {value}: at most {card[feature] - 1:,} (features/synthetic_interactions.yaml "
                f"{feature} cardinality {card[feature]:,} - 1 for the OOV index)"
            )
    model = InteractionModel(seed, users, items, card["user_segment"] - 1, card["item_category"] - 1,
                             card["item_tags"] - 1, settings)
    if log:
        log(f"  planted {users:,} users x {items:,} items; sampling {rows:,} interactions")
    rng = np.random.default_rng([seed, 1])
    user, item, top = model.sample(rng, rows)  # (rows,), (rows,), (U, K)
    gaps = rng.integers(1, 2 * settings.mean_gap, rows)  # (rows,)
    timestamp = settings.start_time + np.cumsum(gaps)  # (rows,) strictly increasing
    if log:
        log(f"  sampled {rows:,} interactions ({time.perf_counter() - t0:.1f} s)")

    ranges = split_rows(rows)  # time order = row order
    with DatasetWriter(out_dir, spec) as writer:
        for start in range(0, rows, settings.chunk_rows):
            stop = min(start + settings.chunk_rows, rows)
            u, i = user[start:stop], item[start:stop]
            table = pa.table({
                "label": pa.array(np.ones(stop - start, np.float32)),
                "user_id": pa.array(u, pa.int64()),
                "user_segment": pa.array(model.user_segment[u], pa.int64()),
                "item_id": pa.array(i, pa.int64()),
                "item_category": pa.array(model.item_category[i], pa.int64()),
                "item_tags": model.item_tags(i),
                "timestamp": pa.array(timestamp[start:stop], pa.int64()),
            })
            for split, (lo, hi) in ranges.items():
                a, b = max(lo, start), min(hi, stop)
                if a < b:
                    writer.add(split, table.slice(a - start, b - a))

        popular = np.argsort(-model.log_popularity, kind="stable")[: top.shape[1]]  # (K,)
        oracle = {}
        for split in ("validation", "test"):
            lo, hi = ranges[split]
            oracle[split] = {
                "split": split,
                "rows": hi - lo,
                "recall": _recalls(top[user[lo:hi]], item[lo:hi]),
                "popularity_recall": _recalls(np.broadcast_to(popular, (hi - lo, popular.size)), item[lo:hi]),
                "ranking": "all items by true log popularity + <u, v> / tau; seen items not excluded",
            }
        return writer.finish(
            source={"kind": "synthetic", "generator": "interactions", "seed": int(seed), "rows": rows},
            split={
                "method": "time",
                "fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
                "rows": {s: [lo, hi] for s, (lo, hi) in ranges.items()},
                "timestamps": {s: [int(timestamp[lo]), int(timestamp[hi - 1])] for s, (lo, hi) in ranges.items()},
            },
            extra={
                "oracle": oracle["test"],
                "oracle_validation": oracle["validation"],
                "generator": {
                    "kind": "interactions",
                    "seed": int(seed),
                    "users": users,
                    "items": items,
                    "segments": card["user_segment"] - 1,
                    "categories": card["item_category"] - 1,
                    "tags": card["item_tags"] - 1,
                    "settings": dataclasses.asdict(settings),
                },
                "generation_seconds": round(time.perf_counter() - t0, 2),
            },
        )
