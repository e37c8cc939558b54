"""The registry of compression families: kind -> :class:`~recsys.embeddings.methods.family.Family`.

The kinds are :data:`recsys.features.methods.KINDS` (the one registry line); each kind's build
half is ``recsys/embeddings/methods/<kind>.py``'s ``FAMILY``. Importing this module fails loudly
when a registered kind has no family, so a half-added method cannot load.
"""

from __future__ import annotations

from importlib import import_module

from recsys.embeddings.methods.family import Family
from recsys.features.methods import KINDS, SCHEMAS


def _load(kind: str) -> Family:
    module = import_module(f"recsys.embeddings.methods.{kind}")
    family = getattr(module, "FAMILY", None)
    if not isinstance(family, Family) or family.schema is not SCHEMAS[kind]:
        raise ImportError(f"recsys.embeddings.methods.{kind} must declare FAMILY = Family(schema=SCHEMA of kind {kind!r}, ...)")
    return family


FAMILIES: dict[str, Family] = {kind: _load(kind) for kind in KINDS}

COMPRESSED: tuple[str, ...] = tuple(k for k, f in FAMILIES.items() if not f.baseline)
"""The methods that compress (every kind but the full-table baseline), in registry order."""


def family(kind: str) -> Family:
    """The family of ``kind``; ``ValueError`` naming the allowed kinds otherwise."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise ValueError(f"compression kind {kind!r}: allowed {list(FAMILIES)}") from None


def needs_counts(kinds: set[str] | list[str], budget_method: str | None = None) -> bool:
    """Whether building these kinds (or solving ``budget_method``) reads vocabulary counts."""
    return any(FAMILIES[k].needs_counts for k in (*kinds, *([budget_method] if budget_method else [])))
