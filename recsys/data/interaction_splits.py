"""The split, order and duplicate rules of ``recsys ingest interactions`` (:mod:`recsys.data.interactions_ingest`).

**Order.** A user's interactions are ordered by time key (``--timestamp``; without it, input
order), ties by input order: files in the order given (train, validation, test), then line / row,
then (LightGCN) position in the line. A total order, so every rule below is deterministic.

**Duplicates** (the same user and item more than once): for a split that recsys computes
(``leave_last_out``, ``time``, ``random``) the first interaction in that order is kept and later
repeats are dropped (:func:`duplicate_mask`, counted in the manifest's ``duplicates``): a repeat
would otherwise sit in train and in test at once, where evaluation that excludes training items can
never hit it. Given splits and ``--split column`` are kept exactly as given; their repeats are only
counted (:func:`count_repeats`).

**Splits** (:func:`computed_split`). ``leave_last_out``: per user, the last interaction -> test, the
one before -> validation, the rest train (:func:`recsys.data.interactions.leave_last_out_codes`);
users with fewer than 3 train only; of equal timestamps the row later in the input is the later.
``time``: global cut-offs at the ``ratios`` quantiles of the time key (rows sharing a boundary
instant go to the later split; :func:`recsys.data.parquet_source.timestamp_boundaries`).
``random``: per user, rows in a seeded random order, RecBole's counts (:func:`random_split_counts`).

**History features** (:func:`history_windows`): ``time`` splits keep the shared rule (items strictly
before the row, whatever their split); every other split builds histories from training rows
only, so no held-out item ever enters a model input.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from recsys.data.interactions import MIN_INTERACTIONS, UserHistory, leave_last_out_codes
from recsys.data.layout import SPLITS
from recsys.data.parquet_source import row_order_boundaries, split_codes, timestamp_boundaries

SPLIT_METHODS: tuple[str, ...] = ("leave_last_out", "time", "random", "column")
TIE_RULE = ("equal time keys: the row later in the input (files in the order given, then line / row, then "
            "position in a LightGCN line) is the later interaction")
HISTORY_RULES = {
    "time": "the user's items with a time key strictly before the row's (any split), the last max_length, oldest first",
    "training_only": "train rows: the user's training items strictly before the row's time key; validation and test "
                     "rows: all the user's training items; the last max_length, oldest first (held-out items never "
                     "enter a history)",
}
DUPLICATE_RULES = {
    "drop": "the same (user, item) more than once: the first in the documented order is kept, later repeats are dropped",
    "keep": "given splits are kept exactly as given: repeats are counted, not dropped",
}


def history_windows(method: str, user: np.ndarray, item: np.ndarray, key: np.ndarray, codes: np.ndarray) -> tuple[UserHistory, str]:
    """Each row's history window over raw item ids ``item``, and the rule recorded in the manifest."""
    if method == "time":
        return UserHistory.build(user, item, key), HISTORY_RULES["time"]
    # held-out rows sort after all of the user's training rows, so every window holds training items only
    composite = (codes > 0).astype(np.int64) * (int(key.max(initial=0)) + 1) + key
    return UserHistory.build(user, item, composite, codes), HISTORY_RULES["training_only"]


# -- order, duplicates, splits ------------------------------------------------------------------------
def order_key(time: np.ndarray | None, n: int) -> np.ndarray:
    """``(n,)`` int64 rank of each row's time key (equal keys, equal rank); input order without times."""
    if time is None:
        return np.arange(n, dtype=np.int64)
    return np.unique(time, return_inverse=True)[1].ravel().astype(np.int64)


def duplicate_mask(user: np.ndarray, item: np.ndarray, key: np.ndarray) -> np.ndarray:
    """``(n,)`` True for each repeat of a (user, item) pair after its first in (key, input) order."""
    n = user.size
    order = np.lexsort((np.arange(n), key, item, user))
    su, si = user[order], item[order]
    repeat = np.zeros(n, bool)
    repeat[1:] = (su[1:] == su[:-1]) & (si[1:] == si[:-1])
    out = np.zeros(n, bool)
    out[order] = repeat
    return out


def random_split_counts(n: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """Rows per split for users with ``n`` interactions: ``(len(n), 3)``, RecBole's rule.

    ``cnt[k] = floor(ratio_k * n)`` for validation and test, train the rest; then, from the last
    split backwards while train keeps more than one row, a split with ``0 < ratio_k * n < 1``
    takes one row from train (RecBole ``Dataset._calcu_split_ids``). So a user with 2 rows gives one
    to test, with 3 one each; a user with 1 row stays in train.
    """
    n = np.asarray(n, np.int64)
    out = np.zeros((n.size, 3), np.int64)
    for size in np.unique(n).tolist():
        cnt = [int(r * size) for r in ratios]
        cnt[0] = size - sum(cnt[1:])
        for i in range(1, len(ratios)):
            if cnt[0] <= 1:
                break
            if 0 < ratios[-i] * size < 1:
                cnt[-i] += 1
                cnt[0] -= 1
        out[n == size] = cnt
    return out


def random_codes(user: np.ndarray, ratios: Sequence[float], seed: int) -> np.ndarray:
    """Per-user random split codes: each user's rows in a seeded random order, counts by
    :func:`random_split_counts` (train first, then validation, then test)."""
    n = user.size
    shuffle = np.random.default_rng(seed).permutation(n)
    order = np.lexsort((shuffle, user))
    su = user[order]
    starts = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    sizes = np.diff(np.r_[starts, n])
    counts = random_split_counts(sizes, ratios)  # (users, 3)
    rank = np.arange(n) - np.repeat(starts, sizes)  # position within the user's shuffled rows
    train_end = np.repeat(counts[:, 0], sizes)
    valid_end = train_end + np.repeat(counts[:, 1], sizes)
    sorted_codes = np.where(rank < train_end, 0, np.where(rank < valid_end, 1, 2)).astype(np.int8)
    codes = np.empty(n, np.int8)
    codes[order] = sorted_codes
    return codes


def count_repeats(user: np.ndarray, item: np.ndarray, codes: np.ndarray) -> dict[str, int]:
    """Repeated (user, item) pairs of splits kept as given: within each split, and held-out pairs also in train."""
    pair = user.astype(np.int64) * (int(item.max(initial=0)) + 1) + item
    out = {}
    for code, s in enumerate(SPLITS):
        p = pair[codes == code]
        out[f"within_{s}"] = int(p.size - np.unique(p).size)
    train = np.unique(pair[codes == 0])
    for code, s in ((1, "validation"), (2, "test")):
        out[f"{s}_pairs_also_in_train"] = int(np.isin(pair[codes == code], train).sum())
    return out


def computed_split(method: str, user: np.ndarray, key: np.ndarray, time: np.ndarray | None, ratios: Sequence[float],
                   seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """(split codes, the manifest's ``split`` entry) of ``leave_last_out``, ``time`` or ``random``.

    Args:
        method: the split rule (see the module docstring).
        user: ``(n,)`` user codes; key: ``(n,)`` order keys (:func:`order_key`).
        time: ``(n,)`` the time keys themselves (for the recorded boundaries), or None.
        ratios: train, validation, test fractions (``time``, ``random``).
        seed: the ``random`` seed.
    """
    ratios = list(ratios)
    order = "by time key, ties by input order" if time is not None else "by input order (no --timestamp)"
    if method == "leave_last_out":
        codes = leave_last_out_codes(user, key)
        users_all = np.unique(user).size
        return codes, {"method": "leave_last_out", "order": order, "min_interactions": MIN_INTERACTIONS,
                       "rule": "per user: last interaction -> test, the one before -> validation, the rest -> train",
                       "users": int(users_all), "users_train_only": int(users_all - np.unique(user[codes == 2]).size)}
    if method == "time":
        boundaries = timestamp_boundaries(key, ratios) if time is not None else row_order_boundaries(key.size, ratios)
        codes = split_codes(key, boundaries).astype(np.int8)
        info: dict[str, Any] = {"method": "time", "ratios": ratios, "order": order,
                                "boundary_ties": "rows sharing a boundary instant go to the later split"}
        if time is not None:
            info["boundaries"] = [time[key == b][0].item() if (key == b).any() else None for b in boundaries]
        else:
            info["boundaries_rows"] = boundaries
        return codes, info
    codes = random_codes(user, ratios, seed)
    return codes, {"method": "random", "ratios": ratios, "seed": seed,
                   "rule": "per user: rows in a seeded random order (numpy default_rng(seed).permutation), then RecBole's "
                           "count rule: validation and test get floor(ratio * n) rows, train the rest; from test backwards, "
                           "a split with 0 < ratio * n < 1 takes one row from train while train keeps more than one"}


