"""Interaction data sets (user x item events) for retrieval: per-user splits and history features.

Shared by ``recsys ingest movielens`` and ``recsys synth interactions``; the item and user
catalogues (``items.parquet`` / ``users.parquet``) are written by
:meth:`recsys.data.writer.DatasetWriter.add_catalogue`.

**Order of a user's interactions.** By timestamp, ties broken by the original row order (the line
order of the ratings file; the generation order of the synthetic data): a total order, so every
rule below is deterministic.

**Split ``leave_last_out``** (:func:`leave_last_out_codes`): per user, in that order, the last
interaction is test, the one before it validation, the rest train. Users with fewer than
``MIN_INTERACTIONS`` (3) interactions keep all of them in train (they have no validation or test row).

**History features** (:class:`UserHistory`): a multi-valued user feature holding the raw ids of
the user's previous items, oldest first, the last ``max_length`` of them:

* a train row (any split method) and a validation / test row of the global time split: the items
  of the user's interactions with a timestamp *strictly smaller* than the row's (items of the same
  second are not "before", whatever their row order, so a row never sees its own target, an
  item of its own instant, or the future);
* a validation or test row of ``leave_last_out``: the user's *training* items (the last
  ``max_length``), as a model sees a user at serving time. The test row's history does not hold the
  validation item.

An empty history is an empty list (no padding); ids go through the target feature's vocabulary,
so they share its encoding (an item unseen in training maps to the OOV index 0, as in ``item_id``).

**Which feature is a history feature.** A sparse feature with ``history_of: <feature>`` in the
spec, or (until the spec schema has that key) one named ``history_<feature>`` where ``<feature>``
is another sparse feature of the spec, e.g. ``history_item_id``. It must be multi-valued.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys.features.spec import DatasetSpec, SparseFeature

MIN_INTERACTIONS = 3
HISTORY_PREFIX = "history_"
ORDER_RULE = "per user by timestamp, ties by original row order"
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}
HISTORY_RULES = {  # recorded in the manifest's ``history`` entry, per split method
    "time": "the user's items with a timestamp strictly before the row's, the last max_length, oldest first",
    "leave_last_out": "train rows: the user's items strictly before the row's timestamp; validation and test rows: "
                      "the user's training items (the test row's history does not hold the validation item); "
                      "the last max_length, oldest first",
}


def history_target(spec: DatasetSpec, feature: SparseFeature) -> str | None:
    """The feature whose ids ``feature`` holds as a history, or None for an ordinary feature."""
    target = getattr(feature, "history_of", None)  # the spec key, once the schema has it
    if target is None and feature.name.startswith(HISTORY_PREFIX):
        name = feature.name[len(HISTORY_PREFIX):]
        if any(f.name == name for f in spec.sparse):
            target = name
    return target


def history_features(spec: DatasetSpec) -> dict[str, str]:
    """History feature name -> the feature whose vocabulary it shares, validated.

    Raises:
        ValueError: a history feature that is single-valued, points at a missing / multi-valued
            feature, or differs from it in having a vocabulary (names the feature and the fix).
    """
    out: dict[str, str] = {}
    sparse = {f.name: f for f in spec.sparse}
    for f in spec.sparse:
        target = history_target(spec, f)
        if target is None:
            continue
        where = f"feature spec {spec.name!r}: features[{f.name}]"
        t = sparse.get(target)
        if t is None:
            raise ValueError(f"{where}.history_of: got {target!r}, not a sparse feature; known: {sorted(sparse)}")
        if not f.multi_valued:
            raise ValueError(
                f"{where}.max_length: got 1; a history of {target} holds a list of earlier items, "
                "give max_length L > 1 (the last L items are kept)"
            )
        if t.multi_valued or history_target(spec, t) is not None:
            raise ValueError(f"{where}: history of {target!r}, which is multi-valued; a history needs a single-valued id feature")
        if t.has_vocab != f.has_vocab:
            raise ValueError(
                f"{where}.cardinality: got {f.cardinality!r} but {target} has {t.cardinality!r}; a history shares "
                f"its target's id encoding, so give both integer cardinalities or both 'raw'"
            )
        out[f.name] = target
    return out


def user_time_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Row indices sorted by (user, timestamp, row): the documented order of each user's interactions."""
    n = user.size
    return np.lexsort((np.arange(n), np.asarray(timestamp, np.int64), np.asarray(user, np.int64)))


def _run_starts(order_keys: list[np.ndarray]) -> np.ndarray:
    """For sorted keys: the position where each element's run of equal keys starts."""
    n = order_keys[0].size
    new = np.ones(n, bool)
    if n > 1:
        change = np.zeros(n - 1, bool)
        for k in order_keys:
            change |= k[1:] != k[:-1]
        new[1:] = change
    return np.maximum.accumulate(np.where(new, np.arange(n), 0))


def leave_last_out_codes(user: np.ndarray, timestamp: np.ndarray, min_interactions: int = MIN_INTERACTIONS) -> np.ndarray:
    """Split codes (0 train, 1 validation, 2 test) per row, in row order; see the module docstring.

    Args:
        user: ``(n,)`` user ids.
        timestamp: ``(n,)`` event times.
        min_interactions: users with fewer interactions stay in train only. Default 3.

    Returns:
        ``(n,)`` int8 codes.
    """
    n = user.size
    codes = np.zeros(n, np.int8)
    if n == 0:
        return codes
    order = user_time_order(user, timestamp)
    su = np.asarray(user)[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    ends = np.r_[starts[1:], n]
    big = ends - starts >= min_interactions
    sorted_codes = np.zeros(n, np.int8)
    sorted_codes[ends[big] - 1] = SPLIT_CODES["test"]
    sorted_codes[ends[big] - 2] = SPLIT_CODES["validation"]
    codes[order] = sorted_codes
    return codes


@dataclass(frozen=True)
class UserHistory:
    """Each row's history window into its user's items, in the documented order.

    Attributes:
        items: ``(n,)`` raw item ids sorted by (user, timestamp, row).
        first: ``(n,)`` per row (row order): position of its user's first interaction in ``items``.
        end: ``(n,)`` per row: end (exclusive) of the items its history may hold.
    """

    items: np.ndarray
    first: np.ndarray
    end: np.ndarray

    @classmethod
    def build(cls, user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, codes: np.ndarray | None = None) -> "UserHistory":
        """Index the histories of ``n`` interactions.

        Args:
            user, item, timestamp: ``(n,)`` per interaction, in row order.
            codes: ``(n,)`` leave-last-out split codes (:func:`leave_last_out_codes`): validation /
                test rows then see the user's training items. None (time split): every row sees
                the items strictly before its timestamp.
        """
        user = np.asarray(user, np.int64)
        timestamp = np.asarray(timestamp, np.int64)
        n = user.size
        order = user_time_order(user, timestamp)
        su, st = user[order], timestamp[order]
        first_sorted = _run_starts([su])
        end_sorted = _run_starts([su, st])  # start of the row's (user, timestamp) instant
        if codes is not None:
            sorted_codes = np.asarray(codes)[order]
            held_out = sorted_codes > 0
            if held_out.any():
                # the user's training items end where the user's first held-out row is
                pos = np.arange(n)
                first_held = np.full(n, n, np.int64)
                np.minimum.at(first_held, first_sorted[held_out], pos[held_out])
                end_sorted = np.where(held_out, first_held[first_sorted], end_sorted)
        first, end = np.empty(n, np.int64), np.empty(n, np.int64)
        first[order], end[order] = first_sorted, end_sorted
        return cls(np.asarray(item, np.int64)[order], first, end)

    def lists(self, rows: np.ndarray | slice, max_length: int) -> pa.Array:
        """The histories of ``rows`` (indices or a slice, row order) as a list<int64> array, oldest first."""
        end = self.end[rows]  # (m,)
        start = np.maximum(self.first[rows], end - max_length)  # (m,)
        lengths = end - start  # (m,)
        offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        gather = np.repeat(start - offsets[:-1], lengths) + np.arange(offsets[-1])  # (L,)
        values = pa.array(self.items[gather], pa.int64())
        if offsets[-1] < 2**31:
            return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
        return pa.LargeListArray.from_arrays(pa.array(offsets), values).cast(pa.list_(pa.int64()))
