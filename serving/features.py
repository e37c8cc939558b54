"""Request user features -> the user tower's flat inputs: raw ids -> vocabulary indices, OOV reported.

    .venv/bin/python -m pytest tests/unit/serving/test_features.py -q

A request names each user-tower feature with a raw value (single-valued features) or a list
(multi-valued ones), ids as in the source data::

    {"user_id": 1042, "user_segment": 3, "history_item_id": [77, 12]}

Ids are matched by the type of the source's ids (:func:`coerce_id`): where the source's ids are
integers, an integer (``1042``, or ``1042.0``: an integer to JSON Schema) or a string holding a
decimal integer (``"1042"``, as clients that cannot hold int64 send them) is accepted and any
other string is refused; where the source had string
ids (the vocabulary keeps them as tokens), a string is looked up as a token and an integer as the
raw id ingest derived from it. A wrong type is a :class:`FieldError`, never a silent OOV.

:meth:`UserEncoder.parse` checks one user (unknown feature, wrong type, too many values: each a
:class:`FieldError` with the field path and what is allowed) and maps raw ids through the
bundle's vocabularies; an id the vocabulary does not know goes to the out-of-vocabulary index 0
and its feature is reported (``oov_features``). Features with ``cardinality: raw`` (hashed
methods) take the raw id as is. A feature the request leaves out gets its policy
(:data:`MISSING_POLICIES`, the manifest's ``missing``) and is reported (``missing_features``).
:meth:`UserEncoder.encode` lays many parsed users out as the program's ``(values, lengths (F, B))``::

    #               b = 0    b = 1
    # "user_id"     [4]      [9]          values  = [4, 9, 0, 7, 7, 2]
    # "history"     [0]      [7, 7, 2]    lengths = [[1, 1], [1, 3]]
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from serving.bundle import Vocabulary

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_DECIMAL = re.compile(r"-?[0-9]{1,19}")  # a decimal integer literal that may fit int64 (checked after int())
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlong = 2, 40, 40, 4, 4, 40

# What a request without a user feature gets (the manifest's ``user_tower.features[].missing``):
# "oov" the feature's out-of-vocabulary row 0 (the row training gave ids it had not counted), "empty" an empty
# bag (a zero pooled vector: multi-valued features, and raw-id features, which have no OOV row), "required" 422.
MISSING_POLICIES: tuple[str, ...] = ("oov", "empty", "required")


def missing_policy(multi_valued: bool, has_vocab: bool, require_all: bool = False) -> str:
    """The default policy of a user feature; ``require_all`` (``--require-all-features``) makes every
    single-valued feature required, as every bundle was before the policy existed."""
    if multi_valued:
        return "empty"  # an empty history is a valid value
    if require_all:
        return "required"
    return "oov" if has_vocab else "empty"


def short_repr(value: Any) -> str:
    """A bounded repr for error messages: a deeply nested or huge value must not recurse or bloat the answer."""
    return _SHORT.repr(value)


def coerce_id(item: Any, name: str, string_ids: bool, where: str, errors: list[FieldError]) -> int | str | None:
    """One request id matched by the type of the source's ids (module docstring); None after an error.

    Args:
        item: the JSON value.
        name: the feature (for the message).
        string_ids: the source's ids are strings (the vocabulary has tokens).
        where: the field path.
        errors: where a problem is appended.
    """
    if isinstance(item, float) and item.is_integer() and _INT64_MIN <= item < _INT64_MAX:
        item = int(item)  # 24.0 is the integer 24 to JSON Schema (and to the OpenAPI document); 24.5 is refused
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        kind = "a string token or an integer" if string_ids else "an integer"
        errors.append(FieldError(where, f"got {type(item).__name__} {short_repr(item)}; give {kind} id of {name}"))
        return None
    if isinstance(item, str):
        if string_ids:
            return item
        if not _DECIMAL.fullmatch(item):
            errors.append(FieldError(where, f"got the string {short_repr(item)}; the ids of {name} are integers in the source: "
                                            "give an integer (or a string of decimal digits)"))
            return None
        item = int(item)
    if not _INT64_MIN <= item <= _INT64_MAX:
        errors.append(FieldError(where, f"got {short_repr(item)}; ids are int64"))
        return None
    return item


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
    missing: str  # one of MISSING_POLICIES

    @property
    def string_ids(self) -> bool:
        return self.vocab is not None and bool(self.vocab.tokens)


@dataclass
class ParsedUser:
    """One user's feature indices (in the tower's key order) and the features with unknown ids."""

    indices: list[np.ndarray]
    oov_features: list[str] = field(default_factory=list)
    missing_features: list[str] = field(default_factory=list)  # left out of the request: their policy applied
    num_values: int = 0
    num_oov: int = 0
    history_items: np.ndarray | None = None  # item indices of the user's history features


class UserEncoder:
    """Parses request users against a bundle's user-tower features and vocabularies.

    Args:
        features (list[dict]): the manifest's ``user_tower.features`` (``missing``: the policy; bundles
            written before it existed get :func:`missing_policy`'s default).
        vocabs (dict[str, Vocabulary]): the bundle's vocabularies.
        item_id_feature (str): the item id feature (history features of it give the history items).
        require_all_features (bool): every single-valued feature required, whatever the bundle says
            (``recsys serve --require-all-features``). Default False.

    Raises:
        ValueError: a ``missing`` policy that is not one of :data:`MISSING_POLICIES`.
    """

    def __init__(self, features: list[dict[str, Any]], vocabs: dict[str, Vocabulary], item_id_feature: str,
                 require_all_features: bool = False):
        self.features = []
        for f in features:
            vocab = vocabs.get(f["name"]) if f["vocab"] else None
            policy = f.get("missing") or missing_policy(bool(f["multi_valued"]), vocab is not None)
            if policy not in MISSING_POLICIES or (policy == "oov" and vocab is None):
                raise ValueError(f"user_tower.features {f['name']}: missing policy {policy!r}; one of {list(MISSING_POLICIES)} "
                                 "('oov' only for features with a vocabulary)")
            if require_all_features and not f["multi_valued"]:
                policy = "required"
            self.features.append(FeatureInfo(f["name"], bool(f["multi_valued"]), int(f["max_length"]), vocab, f.get("history_of"), policy))
        self.keys = [f.name for f in self.features]
        self._by_name = {f.name: f for f in self.features}
        self.item_id_feature = item_id_feature

    def describe(self) -> dict[str, str]:
        """feature -> what a request may give (for error messages and /v1/metadata)."""
        when_missing = {"oov": "the OOV row", "empty": "an empty bag", "required": "422: required"}
        return {
            f.name: (f"a list of at most {f.max_length} ids" if f.multi_valued else "one id")
            + (" (string tokens or raw integer ids)" if f.string_ids else " (integers)")
            + (" (raw ids, hashed)" if f.vocab is None else "")
            + f"; if missing: {when_missing[f.missing]}"
            for f in self.features
        }

    def _ids(self, value: Any, info: FeatureInfo, path: str, errors: list[FieldError]) -> list[Any] | None:
        kind = "a string token or an integer" if info.string_ids else "an integer"
        allowed = f"a list of ids (each {kind})" if info.multi_valued else f"one id ({kind})"
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
        out = []
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if info.multi_valued else path
            if isinstance(item, (list, dict)):
                errors.append(FieldError(where, f"got {type(item).__name__} {short_repr(item)}; give {allowed}"))
                return None
            item = coerce_id(item, info.name, info.string_ids, where, errors)
            if item is None:
                return None
            out.append(item)
        return out

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
        parsed = ParsedUser([])
        for info in self.features:
            if info.name not in user:
                if info.missing == "required":
                    errors.append(FieldError(f"{path}.{info.name}", "missing; this single-valued feature is required (the bundle's "
                                             "policy, or --require-all-features; unknown ids may be sent: they map to the OOV index)"))
                else:
                    parsed.missing_features.append(info.name)
        raw_lists: list[list[Any] | None] = []
        for info in self.features:
            raw_lists.append(self._ids(user[info.name], info, f"{path}.{info.name}", errors) if info.name in user else None)
        if errors:
            raise RequestError(errors)
        history = []
        for info, items in zip(self.features, raw_lists):
            if items is None:  # left out: its policy (the OOV row, or an empty bag); not counted as OOV values
                parsed.indices.append(np.zeros(1 if info.missing == "oov" else 0, np.int64))
                continue
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
