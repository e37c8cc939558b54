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

Split by time, 80 / 10 / 10 (default), or ``leave_last_out`` per user (see
:mod:`recsys.data.interactions`). ``items.parquet`` holds every planted item (also the ones no
training row has) with its category and tags; ``users.parquet`` one row per user_id index with
its segment. A spec with ``history_item_id`` gets the users' earlier items. The oracle ranks all items for a user by the true
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
from recsys.data.interactions import HISTORY_RULES, ORDER_RULE, UserHistory, history_features, leave_last_out_codes
from recsys.data.layout import SPLITS
from recsys.data.parquet_source import add_by_split, check_split_rows
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


SYNTH_COLUMNS: tuple[str, ...] = ("user_id", "user_segment", "item_id", "item_category", "item_tags")
ITEM_SIDE: tuple[str, ...] = ("item_category", "item_tags")
USER_SIDE: tuple[str, ...] = ("user_segment",)


def _check_spec(spec: DatasetSpec) -> dict[str, str]:
    """The spec's history features; raises ValueError when the spec does not fit the generator."""
    history = history_features(spec)
    names = [f.name for f in spec.features if f.kind != "label"]
    unknown = [n for n in names if n not in SYNTH_COLUMNS and n not in history]
    problems = [f"features {unknown} are not generated; allowed: {list(SYNTH_COLUMNS)} and history_item_id"] if unknown else []
    for need in ("user_id", "item_id"):
        if need not in names:
            problems.append(f"no feature {need!r}")
    if "item_id" in names and spec.feature("item_id").min_count > 1:
        problems.append(f"features[item_id].min_count: got {spec.feature('item_id').min_count}; items.parquet gives every "
                        "item_id its own index (also those never seen in training), so min_count must be 1")
    for f in spec.sparse:
        if f.tower == "item" and f.name not in ("item_id",) + ITEM_SIDE:
            problems.append(f"features[{f.name}].tower: got 'item', but {f.name} is not an item attribute {['item_id', *ITEM_SIDE]}")
        if f.tower == "user" and f.name not in ("user_id",) + USER_SIDE and f.name not in history:
            problems.append(f"features[{f.name}].tower: got 'user', but {f.name} is not a user attribute "
                            f"{['user_id', *USER_SIDE]} or a history")
    if spec.label is None:
        problems.append("no label feature")
    if spec.timestamp is None:
        problems.append("no 'timestamp' column")
    problems += [f"history feature {h!r} is a history of {t!r}; only item_id histories are generated"
                 for h, t in history.items() if t != "item_id"]
    if problems:
        raise ValueError(f"feature spec {spec.name!r} does not fit `recsys synth interactions`: " + "; ".join(problems))
    return history


def generate_interactions(
    out_dir: str | Path,
    *,
    rows: int,
    seed: int = 0,
    users: int = 20_000,
    items: int = 10_000,
    split: str = "time",
    spec: DatasetSpec | None = None,
    settings: InteractionSettings = InteractionSettings(),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Generate an interactions data set through :class:`DatasetWriter` with its oracle recall.

    Also writes ``items.parquet`` (every planted item, also those no training row has, with its
    category and tags) and ``users.parquet`` (one row per user_id index with its segment), and a
    history feature when the spec has one (:mod:`recsys.data.interactions`).

    Args:
        out_dir: output folder (the ingest layout, see :mod:`recsys.data.layout`).
        rows: interactions; at least 10.
        seed: non-negative seed. Default 0.
        users: number of users, at most the spec's ``user_id`` cardinality - 1. Default 20000.
        items: number of items, at most the spec's ``item_id`` cardinality - 1. Default 10000.
        split: ``"time"`` (80 / 10 / 10 by time, default) or ``"leave_last_out"`` (per user).
        spec: feature spec; a subset of :data:`SYNTH_COLUMNS` plus history features. Default
            ``features/synthetic_interactions.yaml``.
        settings: planted-model knobs. Default :class:`InteractionSettings`.
        log: called with progress lines. Default: silent.

    Returns:
        The manifest; ``oracle`` / ``oracle_validation`` hold the true model's recall@k on the
        test / validation rows of the chosen split.

    Raises:
        ValueError: a count out of range, a negative seed, an unknown split (the message names
            the flag) or a spec that does not fit.
    """
    t0 = time.perf_counter()
    if split not in ("time", "leave_last_out"):
        raise ValueError(f"invalid --split {split!r}: expected 'time' (80/10/10 by time) or 'leave_last_out' (per user)")
    spec = spec if spec is not None else builtin_spec("synthetic_interactions")
    history = _check_spec(spec)
    card = {f.name: int(f.cardinality) for f in spec.sparse}
    defaults = {f.name: int(f.cardinality) for f in builtin_spec("synthetic_interactions").sparse}
    check_positive_int("--rows", rows, 10, "train, validation and test each need rows")
    check_positive_int("--seed", seed, 0, "numpy seeds are non-negative")
    check_positive_int("--users", users, 2, "at least two users")
    check_positive_int("--items", items, 2, "at least two items")
    for flag, value, feature in (("--users", users, "user_id"), ("--items", items, "item_id")):
        if value > card[feature] - 1:
            raise ValueError(
                f"invalid {flag} {value}: at most {card[feature] - 1:,} (feature spec {spec.name!r} "
                f"{feature} cardinality {card[feature]:,} - 1 for the OOV index)"
            )
    # The planted model's sizes come from the spec's caps (the built-in ones when a spec leaves a side feature out).
    sizes = {name: card.get(name, defaults[name]) - 1 for name in ("user_segment", "item_category", "item_tags")}
    model = InteractionModel(seed, users, items, sizes["user_segment"], sizes["item_category"], sizes["item_tags"], settings)
    if log:
        log(f"  planted {users:,} users x {items:,} items; sampling {rows:,} interactions")
    rng = np.random.default_rng([seed, 1])
    user, item, top = model.sample(rng, rows)  # (rows,), (rows,), (U, K)
    gaps = rng.integers(1, 2 * settings.mean_gap, rows)  # (rows,)
    timestamp = settings.start_time + np.cumsum(gaps)  # (rows,) strictly increasing
    if log:
        log(f"  sampled {rows:,} interactions ({time.perf_counter() - t0:.1f} s)")

    if split == "time":
        ranges = split_rows(rows)  # time order = row order
        codes = np.zeros(rows, np.int8)
        for k, (lo, hi) in enumerate(ranges.values()):
            codes[lo:hi] = k
    else:
        codes = leave_last_out_codes(user, timestamp)
    histories = UserHistory.build(user, item, timestamp, codes if split == "leave_last_out" else None) if history else None
    names = [f.name for f in spec.features if f.kind != "label"]
    with DatasetWriter(out_dir, spec) as writer:
        for start in range(0, rows, settings.chunk_rows):
            stop = min(start + settings.chunk_rows, rows)
            u, i = user[start:stop], item[start:stop]
            columns = {
                "user_id": lambda: pa.array(u, pa.int64()),
                "user_segment": lambda: pa.array(model.user_segment[u], pa.int64()),
                "item_id": lambda: pa.array(i, pa.int64()),
                "item_category": lambda: pa.array(model.item_category[i], pa.int64()),
                "item_tags": lambda: model.item_tags(i),
                **{h: (lambda h=h: histories.lists(slice(start, stop), spec.feature(h).max_length)) for h in history},  # type: ignore[union-attr]
            }
            table = pa.table({
                spec.label.name: pa.array(np.ones(stop - start, np.float32)),  # type: ignore[union-attr]
                **{n: columns[n]() for n in names},
                spec.timestamp: pa.array(timestamp[start:stop], pa.int64()),
            })
            add_by_split(writer, table, codes[start:stop])
        check_split_rows(writer, f"--split {split}")
        every_item = np.arange(items)
        catalogue = {"item_id": pa.array(every_item, pa.int64()),
                     "item_category": pa.array(model.item_category, pa.int64()), "item_tags": model.item_tags(every_item)}
        item_cols = ["item_id"] + [f.name for f in spec.sparse if f.tower == "item" and f.name in ITEM_SIDE]
        writer.add_catalogue("items", "item_id", pa.table({c: catalogue[c] for c in item_cols}), keep_unseen=True)
        user_cols = ["user_id"] + [f.name for f in spec.sparse if f.tower == "user" and f.name in USER_SIDE]
        people = {"user_id": pa.array(np.arange(users), pa.int64()), "user_segment": pa.array(model.user_segment, pa.int64())}
        writer.add_catalogue("users", "user_id", pa.table({c: people[c] for c in user_cols}))

        popular = np.argsort(-model.log_popularity, kind="stable")[: top.shape[1]]  # (K,)
        oracle = {}
        for k, name in ((1, "validation"), (2, "test")):
            idx = np.flatnonzero(codes == k)  # time split: one contiguous range, in row order
            oracle[name] = {
                "split": name,
                "rows": int(idx.size),
                "recall": _recalls(top[user[idx]], item[idx]),
                "popularity_recall": _recalls(np.broadcast_to(popular, (idx.size, popular.size)), item[idx]),
                "ranking": "all items by true log popularity + <u, v> / tau; seen items not excluded",
            }
        stamps = {s: [int(timestamp[codes == k].min()), int(timestamp[codes == k].max())] for k, s in enumerate(SPLITS)}
        if split == "time":
            split_info: dict[str, Any] = {
                "method": "time",
                "fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
                "rows": {s: [lo, hi] for s, (lo, hi) in ranges.items()},
                "timestamps": stamps,
            }
        else:
            split_info = {"method": "leave_last_out", "order": f"{ORDER_RULE} (timestamps strictly increase: no ties)",
                          "min_interactions": 3, "users_train_only": int(np.unique(user).size - np.unique(user[codes == 2]).size),
                          "timestamps": stamps}
        return writer.finish(
            source={"kind": "synthetic", "generator": "interactions", "seed": int(seed), "rows": rows},
            split=split_info,
            extra={
                "oracle": oracle["test"],
                "oracle_validation": oracle["validation"],
                "generator": {
                    "kind": "interactions",
                    "seed": int(seed),
                    "users": users,
                    "items": items,
                    "segments": sizes["user_segment"],
                    "categories": sizes["item_category"],
                    "tags": sizes["item_tags"],
                    "settings": dataclasses.asdict(settings),
                },
                **({"history": {h: {"of": t, "max_length": spec.feature(h).max_length, "rule": HISTORY_RULES[split]}
                               for h, t in history.items()}}
                   if history else {}),
                "generation_seconds": round(time.perf_counter() - t0, 2),
            },
        )
