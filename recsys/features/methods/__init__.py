"""The schema halves of the compression methods, one file per method, and THE registry of kinds.

``KINDS`` is the one registry line: adding a method appends its kind here and writes
``recsys/features/methods/<kind>.py`` (a :class:`~recsys.features.methods.base.MethodSchema`
named ``SCHEMA``) and ``recsys/embeddings/methods/<kind>.py`` (its build half, a ``FAMILY``).
Everything that lists methods (the config's tagged union, the budget options, the solver, the
naive reference, the benches, the sweep and its report) reads this registry.
"""

from __future__ import annotations

from importlib import import_module

from recsys.features.methods.base import MethodSchema

KINDS: tuple[str, ...] = ("full", "hashed", "multi_hash", "qr", "mixed_dim", "unified", "tt", "dhe")

SCHEMAS: dict[str, MethodSchema] = {kind: import_module(f"recsys.features.methods.{kind}").SCHEMA for kind in KINDS}

for _kind, _schema in SCHEMAS.items():  # a file that declares another kind than its name is a bug
    if _schema.kind != _kind:
        raise ImportError(f"recsys.features.methods.{_kind}.SCHEMA declares kind {_schema.kind!r}; it must be {_kind!r}")

__all__ = ["KINDS", "SCHEMAS", "MethodSchema"]
