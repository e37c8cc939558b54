"""Typed options of the budget solver, one schema per method.

The solver (:func:`recsys.embeddings.budget.solve_budget`) sizes one compression method for every
feature; ``options`` fix the method's other hyperparameters for all of them::

    embeddings:
      budget: {method: multi_hash, ratio: 0.0625, options: {num_hashes: 3, combiner: sum}}

Each method accepts exactly the keys of its options schema, declared next to its compression
schema in ``recsys/features/methods/<kind>.py``. A key the solver sets itself (the method's
``solver_owned`` fields: the size it solves for, ``num_buckets``, ``num_collisions``, mixed-dim's
``alpha`` and block boundaries ...) is refused with a pointer to ``embeddings.compression.<feature>``,
where a fixed size belongs; any other key is refused with the allowed ones listed. Nothing is
silently ignored. :func:`options_table` lists every method's options and solver-owned fields.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from recsys.features.errors import Problem, Problems, format_value, join_path, validation_problems
from recsys.features.methods import KINDS, SCHEMAS
from recsys.features.methods.full import FullBudgetOptions
from recsys.features.methods.hashed import HashedBudgetOptions
from recsys.features.methods.mixed_dim import MixedDimBudgetOptions
from recsys.features.methods.multi_hash import MultiHashBudgetOptions
from recsys.features.methods.qr import QRBudgetOptions
from recsys.features.methods.unified import UnifiedBudgetOptions

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
    "options_table",
    "parse_budget_options",
]

# Any method's options schema (each method declares its own in recsys.features.methods.<kind>).
BudgetOptions = BaseModel

BUDGET_METHODS: tuple[str, ...] = KINDS

SOLVER_OWNED: dict[str, tuple[str, ...]] = {kind: SCHEMAS[kind].solver_owned for kind in KINDS}
"""Per method, the hyperparameters the solver chooses to meet the budget."""


def budget_option_problems(method: str, options: Any, path: str = "options") -> tuple[BudgetOptions | None, list[Problem]]:
    """Validate ``options`` for ``method``; every problem at once, paths under ``path``.

    Returns:
        The typed options (``None`` when there are problems) and the problems.
    """
    if method not in SCHEMAS:
        return None, [Problem(join_path(path, ""), f"method {method!r} has no options; allowed methods: {list(BUDGET_METHODS)}")]
    schema = SCHEMAS[method].options
    if isinstance(options, schema):
        return options, []
    options = {} if options is None else options
    if not isinstance(options, Mapping):
        return None, [Problem(path, f"got {format_value(options)}; allowed: a mapping of {method} options")]
    allowed = sorted(schema.model_fields)
    shown = str(allowed) if allowed else "none"
    owned = SOLVER_OWNED[method]
    # Fields of the method's compression kind that the solver neither sets nor takes as an option.
    per_feature = set(SCHEMAS[method].compression.model_fields) - {"kind"} - set(owned) - set(allowed)
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
        method: a budget method (a kind of :data:`recsys.features.methods.KINDS`).
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


def options_table() -> list[tuple[str, str, str]]:
    """``(method, options (default), set by the solver)`` for every registered method."""
    rows = []
    for kind in KINDS:
        schema = SCHEMAS[kind]
        options = ", ".join(f"{name} ({field.default})" for name, field in schema.options.model_fields.items()) or "none"
        rows.append((kind, options, ", ".join(schema.solver_owned) or "none"))
    return rows
