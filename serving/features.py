"""Request user features -> the user tower's flat inputs: raw ids -> vocabulary indices, OOV reported.

    .venv/bin/python -m pytest tests/unit/serving/test_features.py -q

A request names each user-tower feature with a raw value (single-valued features) or a list
(multi-valued ones), ids as in the source data::

    {"user_id": 1042, "user_segment": 3, "history_item_id": [77, 12]}

:meth:`UserEncoder.parse` checks one user (unknown feature, wrong type, too many values, a
missing single-valued feature: each a :class:`FieldError` with the field path and what is
allowed) and maps raw ids through the bundle's vocabularies; an id the vocabulary does not know
goes to the out-of-vocabulary index 0 and its feature is reported. Features with
``cardinality: raw`` (hashed methods) take the raw id as is. A missing multi-valued feature is
an empty bag. :meth:`UserEncoder.encode` lays many parsed users out as the program's
``(values, lengths (F, B))``::

    #               b = 0    b = 1
    # "user_id"     [4]      [9]          values  = [4, 9, 0, 7, 7, 2]
    # "history"     [0]      [7, 7, 2]    lengths = [[1, 1], [1, 3]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from serving.bundle import Vocabulary

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(frozen=True)
class FieldError:
    """One problem of a request: ``field`` is a dotted path (``user.user_id``, ``users[3].k``)."""

    field: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class RequestError(ValueError):
    """A request that cannot be served: every :class:`FieldError` found, and the HTTP status."""

    def __init__(self, errors: list[FieldError], status: int = 422):
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors
        self.status = status


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    multi_valued: bool
    max_length: int
    vocab: Vocabulary | None
    history_of: str | None


@dataclass
class ParsedUser:
    """One user's feature indices (in the tower's key order) and the features with unknown ids."""

    indices: list[np.ndarray]
    oov_features: list[str] = field(default_factory=list)
    num_values: int = 0
    num_oov: int = 0
    history_items: np.ndarray | None = None  # item indices of the user's history features


class UserEncoder:
    """Parses request users against a bundle's user-tower features and vocabularies.

    Args:
        features (list[dict]): the manifest's ``user_tower.features``.
        vocabs (dict[str, Vocabulary]): the bundle's vocabularies.
        item_id_feature (str): the item id feature (history features of it give the history items).
    """

    def __init__(self, features: list[dict[str, Any]], vocabs: dict[str, Vocabulary], item_id_feature: str):
        self.features = [
            FeatureInfo(f["name"], bool(f["multi_valued"]), int(f["max_length"]), vocabs.get(f["name"]) if f["vocab"] else None,
                        f.get("history_of"))
            for f in features
        ]
        self.keys = [f.name for f in self.features]
        self._by_name = {f.name: f for f in self.features}
        self.item_id_feature = item_id_feature

    def describe(self) -> dict[str, str]:
        """feature -> what a request may give (for error messages and /v1/metadata)."""
        return {
            f.name: (f"a list of at most {f.max_length} ids" if f.multi_valued else "one id") + (" (raw ids, hashed)" if f.vocab is None else "")
            for f in self.features
        }

    def _ids(self, value: Any, info: FeatureInfo, path: str, errors: list[FieldError]) -> list[Any] | None:
        allowed = "a list of ids (integers or the source's string tokens)" if info.multi_valued else "one id (an integer or the source's string token)"
        if info.multi_valued:
            if not isinstance(value, list):
                errors.append(FieldError(path, f"got {type(value).__name__}; {info.name} is multi-valued: give {allowed}"))
                return None
            if len(value) > info.max_length:
                errors.append(FieldError(path, f"got {len(value)} values; {info.name} takes at most {info.max_length} (max_length)"))
                return None
            items = value
        else:
            if isinstance(value, list):
                if len(value) != 1:
                    errors.append(FieldError(path, f"got a list of {len(value)}; {info.name} is single-valued: give {allowed}"))
                    return None
                items = value
            else:
                items = [value]
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if info.multi_valued else path
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                errors.append(FieldError(where, f"got {type(item).__name__} {item!r}; give {allowed}"))
                return None
            if isinstance(item, int) and not _INT64_MIN <= item <= _INT64_MAX:
                errors.append(FieldError(where, f"got {item}; ids are int64"))
                return None
            if isinstance(item, str) and info.vocab is None:
                errors.append(FieldError(where, f"got the string {item!r}; {info.name} has no vocabulary (raw ids): give an integer"))
                return None
        return items

    def parse(self, user: Any, path: str = "user") -> ParsedUser:
        """One request user -> :class:`ParsedUser`.

        Raises:
            RequestError: every problem of this user, each with its field path.
        """
        errors: list[FieldError] = []
        if not isinstance(user, dict):
            raise RequestError([FieldError(path, f"got {type(user).__name__}; give an object {{feature: id or list of ids}}")])
        for name in user:
            if name not in self._by_name:
                errors.append(FieldError(f"{path}.{name}", f"unknown feature; the user tower takes {self.keys}"))
        for info in self.features:
            if info.name not in user and not info.multi_valued:
                errors.append(FieldError(f"{path}.{info.name}", "missing; this single-valued feature is required (unknown ids may be sent: they map to the OOV index)"))
        parsed = ParsedUser([])
        raw_lists: list[list[Any] | None] = []
        for info in self.features:
            raw_lists.append(self._ids(user[info.name], info, f"{path}.{info.name}", errors) if info.name in user else [])
        if errors:
            raise RequestError(errors)
        history = []
        for info, items in zip(self.features, raw_lists):
            ints = np.fromiter((x if isinstance(x, int) else 0 for x in items), dtype=np.int64, count=len(items))
            if info.vocab is None:
                idx, known = ints, np.ones(len(items), bool)
            else:
                idx, known = info.vocab.lookup(ints)
                for i, x in enumerate(items):
                    if isinstance(x, str):
                        tok = info.vocab.tokens.get(x)
                        idx[i], known[i] = (tok, True) if tok is not None else (0, False)
            parsed.indices.append(idx)
            parsed.num_values += len(items)
            unknown = int((~known).sum())
            if unknown:
                parsed.oov_features.append(info.name)
                parsed.num_oov += unknown
            if info.history_of == self.item_id_feature:
                history.append(idx[known])
        if history:
            parsed.history_items = np.unique(np.concatenate(history))
        return parsed

    def encode(self, users: Sequence[ParsedUser]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(values (N,) int64, lengths (F, B') int32)`` with ``B' = max(B, 2)`` (a single user is padded
        by a copy of itself: the exported program's batch starts at 2)."""
        rows = list(users) if len(users) >= 2 else list(users) * 2
        values = [u.indices[f] for f in range(len(self.features)) for u in rows]  # feature-major
        lengths = np.array([[len(u.indices[f]) for u in rows] for f in range(len(self.features))], dtype=np.int32)
        flat = np.concatenate(values) if values else np.empty(0, np.int64)
        return torch.from_numpy(flat.astype(np.int64, copy=False)), torch.from_numpy(lengths)
