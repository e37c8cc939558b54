"""Shared pieces of the synthetic data generators: counter-based hashing, Zipf draws, splits.

    recsys synth ctr --out data/synthetic_ctr            # recsys.data.synthetic_ctr
    recsys synth interactions --out data/synthetic_ia    # recsys.data.synthetic_interactions

The generators plant a known model in their data, so training can be scored against the best
possible model (the *oracle*). Per-id parameters of features with up to 10^7 values are never
stored: they are recomputed from ``(seed, feature, id)`` by a counter-based integer hash
(splitmix64's finalizer), so any chunk of rows can be generated, or re-generated in a test,
on its own and bit for bit.
"""

from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_MASK32 = np.uint64(0xFFFFFFFF)
_GOLDEN = 0x9E3779B97F4A7C15

SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _mix64_int(z: int) -> int:
    """splitmix64's finalizer on one Python int (for deriving keys)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_key(*parts: int) -> int:
    """A 64-bit key from a tuple of non-negative ints, e.g. ``(seed, feature index, component)``."""
    h = 0
    for part in parts:
        h = _mix64_int((h ^ (int(part) & _MASK64)) + _GOLDEN)
    return h


def hash_uint64(key: int, index: np.ndarray) -> np.ndarray:
    """Counter-based random words: splitmix64 output number ``index`` of the stream ``key``.

    Args:
        key: a 64-bit stream key from :func:`derive_key`.
        index: ``(n,)`` non-negative int64 counters (ids).

    Returns:
        ``(n,)`` uint64, uniformly distributed and independent across keys and indices.
    """
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (index.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN)  # (n,)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_normal(key: int, index: np.ndarray) -> np.ndarray:
    """Standard normal draws, one per index, a pure function of ``(key, index)``.

    Box-Muller on the two 32-bit halves of :func:`hash_uint64`.
    """
    h = hash_uint64(key, index)  # (n,)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 0.5) * 2.0**-32  # (n,) in (0, 1)
    u2 = ((h & _MASK32).astype(np.float64) + 0.5) * 2.0**-32  # (n,)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def scramble32(values: np.ndarray, salt: int) -> np.ndarray:
    """A bijection of ``[0, 2^32)`` (salted murmur3 fmix32): ranks -> hash-like raw ids.

    Distinct inputs below 2^32 give distinct outputs, so a feature keeps exactly as many raw
    values as it has ranks, while the raw ids look like Criteo's hashed tokens (no order).
    """
    with np.errstate(over="ignore"):
        x = (values.astype(np.uint64) + np.uint64(salt & 0xFFFFFFFF)) & _MASK32  # (n,)
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x85EBCA6B)) & _MASK32
        x ^= x >> np.uint64(13)
        x = (x * np.uint64(0xC2B2AE35)) & _MASK32
        x ^= x >> np.uint64(16)
    return x.astype(np.int64)


def zipf_ranks(rng: np.random.Generator, size: int, num_values: int, exponent: float) -> np.ndarray:
    """Draw ranks in ``[1, num_values]`` with ``P(rank r)`` about proportional to ``r^-exponent``.

    Inverse CDF of the continuous power law on ``[1, num_values + 1)``, floored: O(size), no
    table of ``num_values`` probabilities, so it works for 10^7 values.

    Args:
        rng: the random generator to draw from.
        size: number of draws.
        num_values: number of distinct ranks.
        exponent: the Zipf exponent ``s > 0``, ``s != 1`` (use 1.0001 for ~1).
    """
    u = rng.random(size)  # (size,)
    a = 1.0 - exponent
    x = (1.0 + u * ((num_values + 1.0) ** a - 1.0)) ** (1.0 / a)  # (size,) in [1, num_values + 1)
    return np.clip(x.astype(np.int64), 1, num_values)


def split_rows(rows: int) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, stop)`` of train / validation / test (80 / 10 / 10, in row order)."""
    n_train = rows * 8 // 10
    n_val = rows // 10
    return {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, rows)}


def check_positive_int(flag: str, value: int, minimum: int, why: str) -> None:
    """Raise ``ValueError`` naming ``flag``, the value and what is allowed unless ``value >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"invalid {flag} {value!r}: must be an integer >= {minimum} ({why})")
