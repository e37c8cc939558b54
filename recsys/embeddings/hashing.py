"""Deterministic integer hashes in torch int64 ops, identical in training, export and serving.

Every hashing method (hashed, multi_hash, unified) maps an id ``x`` (any int64, raw ids included)
to a row ``h_seed(x) mod B``. The hash is the splitmix64 finalizer (Steele et al. 2014) applied to
``x + seed * golden``; it is written only with int64 add / multiply / xor / shift, so it:

- runs in eager, ``torch.export`` and TorchScript programs and gives the same bits everywhere;
- needs no float maths (float division loses ids above 2^24) and no Python loop over ids;
- accepts ids up to 2^63 - 1 and negative ids (the bits are hashed, not the value).

torch's int64 multiply wraps modulo 2^64 like uint64; ``>>`` is arithmetic on negatives, so each
logical shift masks the sign-extended bits away. Seeds come from :func:`stable_seed`, a hash of the
feature name and a salt (chunk / probe index) computed with blake2b, not Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """uint64 bit pattern -> the int64 with the same bits."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)


def stable_seed(name: str, salt: int = 0) -> int:
    """A signed 64-bit seed from a feature name and a salt, the same in every process.

    Args:
        name (str): the logical feature (or group) name.
        salt (int): probe / chunk index, so the k hashes of one feature are independent.
    """
    digest = hashlib.blake2b(f"{name}\x00{salt}".encode(), digest_size=8).digest()
    return _signed(int.from_bytes(digest, "little"))


def _logical_shift_right(x: torch.Tensor, s: int) -> torch.Tensor:
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """splitmix64 finalizer of ``ids + seed * golden`` as int64 bits (may be negative).

    Args:
        ids (torch.Tensor): int64 ids, any shape.
        seed (int): a signed 64-bit seed (see :func:`stable_seed`).
    """
    return _finalize(ids + _signed(seed * _GOLDEN))


def _finalize(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finalizer of already seeded int64 values."""
    x = x ^ _logical_shift_right(x, 30)
    x = x * _MUL1
    x = x ^ _logical_shift_right(x, 27)
    x = x * _MUL2
    return x ^ _logical_shift_right(x, 31)


def hash_ids(ids: torch.Tensor, seed: int, num_buckets: int) -> torch.Tensor:
    """Rows ``h_seed(ids) mod num_buckets``, int64 in ``[0, num_buckets)``.

    The modulo of a signed int64 is taken as ``remainder`` (non-negative for a positive divisor),
    which is ``(h mod 2^64) mod B`` only when B is a power of two; either way it is uniform enough
    for B << 2^63 and, above all, identical on every platform.
    """
    return torch.remainder(mix64(ids, seed), num_buckets)


def hash_ids_many(ids: torch.Tensor, seeds: list[int], num_buckets: int, interleave: bool = False) -> torch.Tensor:
    """Several seeded hashes of the same ids in one pass, each equal to :func:`hash_ids`.

    Returns ``(len(seeds), N)`` (row i = ``hash_ids(ids, seeds[i], num_buckets)``), or with
    ``interleave`` ``(N, len(seeds))``, for 1-D ``ids``. One broadcast add of the per-seed offsets
    replaces a Python loop over seeds: the same int64 bits, a fraction of the small-op overhead.
    """
    offsets = torch.tensor([_signed(s * _GOLDEN) for s in seeds], dtype=torch.int64, device=ids.device)
    x = ids.unsqueeze(1) + offsets if interleave else ids.unsqueeze(0) + offsets.unsqueeze(1)
    return torch.remainder(_finalize(x), num_buckets)


def hash_ids_numpy(ids: np.ndarray, seed: int, num_buckets: int) -> np.ndarray:
    """A numpy (uint64) reference of :func:`hash_ids`, used by tests and offline tools."""
    with np.errstate(over="ignore"):
        x = ids.astype(np.int64).view(np.uint64) + np.uint64((seed * _GOLDEN) & _MASK64)
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(_MUL1 & _MASK64)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(_MUL2 & _MASK64)
        x = x ^ (x >> np.uint64(31))
    return np.remainder(x.view(np.int64), np.int64(num_buckets))
