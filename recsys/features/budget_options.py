"""Typed options of the budget solver, one schema per method.

The solver (:func:`recsys.embeddings.budget.solve_budget`) sizes one compression method for every
feature; ``options`` fix the method's other hyperparameters for all of them::

    embeddings:
      budget: {method: multi_hash, ratio: 0.0625, options: {num_hashes: 3, combiner: sum}}

Each method accepts exactly the keys of its schema below. A key the solver sets itself (the size
it solves for: ``num_buckets``, ``num_collisions``, mixed-dim's ``alpha`` and block boundaries ...)
is refused with a pointer to ``embeddings.compression.<feature>``, where a fixed size belongs; any
other key is refused with the allowed ones listed. Nothing is silently ignored.

===========  ===================================================  ==================================
method       options (default)                                    set by the solver
===========  ===================================================  ==================================
full         none                                                 none
hashed       none                                                 num_buckets
multi_hash   num_hashes (2), combiner (sum), importance_weights   num_buckets, num_weight_buckets
             (false)
qr           operation (mult)                                     num_collisions, radices
mixed_dim    num_blocks (4)                                       alpha, block_boundaries
unified      num_chunks (2), num_tables (1)                       num_buckets, group
===========  ===================================================  ==================================
"""

from __future__ import annotations

from typing import Any, Mapping, Union

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from recsys.features.compression import (
    HashedCompression,
    MixedDimCompression,
    MultiHashCompression,
    MultiHashCombiner,
    NumBlocks,
    NumChunks,
    NumHashes,
    NumTables,
    QRCompression,
    QROperation,
    UnifiedCompression,
    check_tables_le_chunks,
)
from recsys.features.errors import Problem, Problems, format_value, join_path, validation_problems

__all__ = [
    "BUDGET_METHODS",
    "BudgetOptions",
    "FullBudgetOptions",
    "HashedBudgetOptions",
    "MixedDimBudgetOptions",
    "MultiHashBudgetOptions",
    "QRBudgetOptions",
    "UnifiedBudgetOptions",
    "SOLVER_OWNED",
    "budget_option_problems",
    "parse_budget_options",
]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FullBudgetOptions(_Options):
    """``full``: nothing to choose."""


class HashedBudgetOptions(_Options):
    """``hashed``: the solver picks ``num_buckets``; nothing else to choose."""


class MultiHashBudgetOptions(_Options):
    """``multi_hash``: see :class:`~recsys.features.compression.MultiHashCompression`."""

    num_hashes: NumHashes = 2
    combiner: MultiHashCombiner = "sum"
    importance_weights: bool = False


class QRBudgetOptions(_Options):
    """``qr`` (2 partitions): the solver picks ``num_collisions``."""

    operation: QROperation = "mult"


class MixedDimBudgetOptions(_Options):
    """``mixed_dim``: the solver picks ``alpha`` and the block boundaries for ``num_blocks`` blocks."""

    num_blocks: NumBlocks = 4


class UnifiedBudgetOptions(_Options):
    """``unified``: one group per embedding dim; the solver picks each group's ``num_buckets``."""

    num_chunks: NumChunks = 2
    num_tables: NumTables = 1

    @model_validator(mode="after")
    def _tables_le_chunks(self) -> "UnifiedBudgetOptions":
        check_tables_le_chunks(self.num_tables, self.num_chunks)
        return self


BudgetOptions = Union[
    FullBudgetOptions, HashedBudgetOptions, MultiHashBudgetOptions, QRBudgetOptions, MixedDimBudgetOptions, UnifiedBudgetOptions
]

_SCHEMAS: dict[str, type[_Options]] = {
    "full": FullBudgetOptions,
    "hashed": HashedBudgetOptions,
    "multi_hash": MultiHashBudgetOptions,
    "qr": QRBudgetOptions,
    "mixed_dim": MixedDimBudgetOptions,
    "unified": UnifiedBudgetOptions,
}
BUDGET_METHODS: tuple[str, ...] = tuple(_SCHEMAS)

SOLVER_OWNED: dict[str, tuple[str, ...]] = {
    "full": (),
    "hashed": ("num_buckets",),
    "multi_hash": ("num_buckets", "num_weight_buckets"),
    "qr": ("num_collisions", "radices"),
    "mixed_dim": ("alpha", "block_boundaries"),
    "unified": ("num_buckets", "group"),
}
"""Per method, the hyperparameters the solver chooses to meet the budget."""

# Fields of a method's compression kind that the solver neither sets nor takes as an option.
_COMPRESSION = {"hashed": HashedCompression, "multi_hash": MultiHashCompression, "qr": QRCompression,
                "mixed_dim": MixedDimCompression, "unified": UnifiedCompression}


def budget_option_problems(method: str, options: Any, path: str = "options") -> tuple[BudgetOptions | None, list[Problem]]:
    """Validate ``options`` for ``method``; every problem at once, paths under ``path``.

    Returns:
        The typed options (``None`` when there are problems) and the problems.
    """
    if method not in _SCHEMAS:
        return None, [Problem(join_path(path, ""), f"method {method!r} has no options; allowed methods: {list(BUDGET_METHODS)}")]
    schema = _SCHEMAS[method]
    if isinstance(options, schema):
        return options, []
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        return None, [Problem(path, f"got {format_value(options)}; allowed: a mapping of {method} options")]
    allowed = sorted(schema.model_fields)
    shown = str(allowed) if allowed else "none"
    owned = SOLVER_OWNED[method]
    per_feature = set(_COMPRESSION[method].model_fields) - {"kind"} - set(owned) - set(allowed) if method in _COMPRESSION else set()
    problems: list[Problem] = []
    known: dict[str, Any] = {}
    for key, value in options.items():
        where = join_path(path, str(key))
        if key in owned:
            problems.append(Problem(where, (
                f"got {format_value(value)}; set by the budget solver; remove it or use "
                f"embeddings.compression.<feature> for a fixed size; allowed keys for method {method!r}: {shown}"
            )))
        elif key == "kind":
            problems.append(Problem(where, (
                f"got {format_value(value)}; the method is embeddings.budget.method ({method!r}), not an option; "
                f"allowed keys: {shown}"
            )))
        elif key in per_feature:
            problems.append(Problem(where, (
                f"got {format_value(value)}; the budget solver does not take {key!r} for method {method!r}; set it per "
                f"feature with embeddings.compression.<feature>, or use the allowed keys: {shown}"
            )))
        elif key not in schema.model_fields:
            problems.append(Problem(where, f"unknown key (got {format_value(value)}); allowed keys for method {method!r}: {shown}"))
        else:
            known[key] = value
    try:
        typed = schema.model_validate(known)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, known, schema, root=path))
        typed = None
    return (typed if not problems else None), problems


def parse_budget_options(method: str, options: Any, path: str = "options") -> BudgetOptions:
    """The typed options of ``method``.

    Args:
        method: a budget method (``hashed``, ``multi_hash``, ``qr``, ``mixed_dim``, ``unified``, ``full``).
        options: a mapping of option keys (or already typed options); ``None`` for the defaults.
        path: the dotted path the options live at, used in the messages.

    Raises:
        Problems: (a ``ValueError``) one line per bad key: unknown, set by the solver, or a bad value.
    """
    typed, problems = budget_option_problems(method, options, path)
    if problems:
        raise Problems(problems)
    assert typed is not None
    return typed
