"""One formatter for every config and spec error: ``path: got <value>; <what is allowed>``.

Feature specs (:mod:`recsys.features.spec`), training configs (:mod:`recsys.train.config`) and
budget options (:mod:`recsys.features.budget_options`) all report through here, so one mistake
reads the same wherever it is made::

    features[C1].compression.num_collisions: got 1; allowed: >= 2
    embeddings.compression.C3.num_buckets: got 0; allowed: >= 1
    model.arch: got 'foo'; allowed: 'dlrm' or 'dcn'
    data.batchsize: unknown key (got 3); allowed keys: ['batch_size', 'check_ranges', ...]

Paths are full and dotted, with list items named by their ``name`` where they have one
(``features[C1]``, ``groups[shared]``). Pydantic's own location parts (tagged-union tags such as
``sparse`` / ``qr`` / ``dcn``, union arms such as ``constrained-int`` or ``function-after[...]``)
never appear: the path is walked through the schema alongside the raw input, and only keys the
user wrote (or must write) are kept.

Validators that check several fields at once raise :class:`Problems`, a ``ValueError`` carrying
one :class:`Problem` per field with a path relative to the validated object; the formatter joins
those paths to the object's own.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Iterable, Union

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

__all__ = ["NAME_PATTERN", "Problem", "Problems", "SpecError", "format_value", "join_path", "validation_problems"]


@dataclass(frozen=True)
class Problem:
    """One invalid field: ``path`` (dotted, relative to what was validated; ``""`` = itself) and
    ``message`` (``got <value>; <what is allowed>``)."""

    path: str
    message: str

    def at(self, base: str) -> "Problem":
        """The same problem seen from ``base``: ``Problem("num_buckets", m).at("features[C1].compression")``."""
        return Problem(join_path(base, self.path), self.message)

    def line(self, root: str = "<root>") -> str:
        return f"{self.path or root}: {self.message}"


class Problems(ValueError):
    """Raised by validators with one :class:`Problem` per field; the formatter expands them."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(p.line("<self>") for p in self.problems))

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return (type(self), (self.problems,))


class SpecError(ValueError):
    """A feature spec failed validation; ``errors`` holds one line per problem.

    Subclasses (e.g. the training config's ``ConfigError``) only change ``what`` was invalid.
    """

    what = "feature spec"

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"invalid {self.what} {source}: {len(errors)} error(s)\n{lines}")

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return (type(self), (self.source, self.errors))


def join_path(base: str, rel: str) -> str:
    """``join_path("features[C1]", "compression.kind")`` -> ``features[C1].compression.kind``."""
    if not base:
        return rel
    if not rel:
        return base
    return f"{base}{rel}" if rel.startswith("[") else f"{base}.{rel}"


def format_value(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- walking a pydantic location through the schema --------------------------------------------


def _strip(ann: Any, discriminator: str | None) -> tuple[Any, list[Any], str | None]:
    """Peel ``Annotated`` and ``X | None``; keep the constraints and a union's discriminator."""
    meta: list[Any] = []
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann, *extra = typing.get_args(ann)
            for m in extra:
                if isinstance(m, FieldInfo):
                    meta.extend(m.metadata)
                    if isinstance(m.discriminator, str):
                        discriminator = discriminator or m.discriminator
                else:
                    meta.append(m)
            continue
        if origin in (Union, types.UnionType):
            arms = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(arms) == 1:
                ann = arms[0]
                continue
        return ann, meta, discriminator


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _arm_for_tag(arms: tuple, discriminator: str, tag: Any) -> Any:
    for arm in arms:
        if _is_model(arm) and discriminator in arm.model_fields:
            literal = _strip(arm.model_fields[discriminator].annotation, None)[0]
            if tag in typing.get_args(literal):
                return arm
    return None


@dataclass
class _Where:
    """Where a location has got to in the schema."""

    ann: Any  # annotation (or model class) still to be stripped; None: unknown
    discriminator: str | None = None
    field: FieldInfo | None = None
    parent: Any = None  # the model class the last user key belongs to


def _walk(loc: tuple, raw: Any, schema: type[BaseModel]) -> tuple[str, _Where, Any]:
    """A pydantic ``loc`` -> (the user's dotted path, the schema at its end, the raw value there)."""
    parts: list[str] = []
    where = _Where(schema)
    node = raw
    for key in loc:
        ann, _, disc = _strip(where.ann, where.discriminator)
        origin = typing.get_origin(ann)
        if origin in (Union, types.UnionType) and isinstance(key, str):
            # A union's tag (discriminated: 'sparse', 'qr', 'dcn') or arm name ('constrained-int'):
            # pydantic's, not the user's.
            arm = _arm_for_tag(typing.get_args(ann), disc, key) if disc else None
            where = _Where(arm, field=where.field, parent=where.parent)
            continue
        if _is_model(ann):
            field = ann.model_fields.get(key) if isinstance(key, str) else None
            parts.append(("." if parts else "") + str(key))
            if field is None:
                where = _Where(None, parent=ann)
            else:
                disc = field.discriminator if isinstance(field.discriminator, str) else None
                where = _Where(field.annotation, disc, field, ann)
            node = node.get(key) if isinstance(node, dict) else None
            continue
        if origin is dict:
            parts.append(("." if parts else "") + str(key))
            where = _Where(typing.get_args(ann)[1] if typing.get_args(ann) else None, parent=where.parent)
            node = node.get(key) if isinstance(node, dict) else None
            continue
        if isinstance(key, int):
            item = node[key] if isinstance(node, list) and 0 <= key < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            parts.append(f"[{name if isinstance(name, str) else key}]")
            args = typing.get_args(ann)
            if origin is tuple and args and args[-1] is not Ellipsis:
                elem = args[key] if key < len(args) else None
            else:
                elem = args[0] if args else None
            where = _Where(elem, parent=where.parent)
            node = item
            continue
        if where.ann is not None or "[" in str(key) or "-" in str(key):
            continue  # a scalar's validator or arm name (e.g. 'function-after[...]'), not a user key
        parts.append(("." if parts else "") + str(key))  # unknown schema: keep what looks like a key
        node = node.get(key) if isinstance(node, dict) else None
    return "".join(parts), where, node


# -- messages ---------------------------------------------------------------------------------


_BOUNDS = ((annotated_types.Gt, "gt", ">"), (annotated_types.Ge, "ge", ">="), (annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<="))


def _bounds(meta: list[Any]) -> str | None:
    out = []
    for cls, attr, sign in _BOUNDS:
        for m in meta:
            if isinstance(m, cls):
                out.append(f"{sign} {getattr(m, attr)}")
    return " and ".join(out) or None


def _allowed(err: dict, where: _Where) -> str:
    """What the field accepts, from pydantic's error type and the schema."""
    t, ctx = err["type"], err.get("ctx") or {}
    _, meta, _ = _strip(where.ann, None) if where.ann is not None else (None, [], None)
    if where.field is not None:
        meta = list(where.field.metadata) + meta
    if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _bounds(meta) or err["msg"].removeprefix("Input should be ")
    if t in ("int_parsing", "int_type", "int_from_float"):
        bounds = _bounds(meta)
        return f"an integer {bounds}" if bounds else "an integer"
    if t in ("float_parsing", "float_type", "finite_number"):
        bounds = _bounds(meta)
        return f"a number {bounds}" if bounds else "a number"
    if t in ("bool_parsing", "bool_type"):
        return "true or false"
    if t == "string_type":
        return "a string"
    if t == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return "a name of letters, digits and '_' that does not start with a digit"
        return f"text matching {ctx.get('pattern')}"
    if t == "literal_error":
        return str(ctx.get("expected", err["msg"]))
    if t in ("list_type", "tuple_type", "set_type", "iterable_type"):
        return "a list"
    if t in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return "a mapping"
    if t == "too_short":
        return f"at least {ctx.get('min_length')} item(s)"
    if t == "too_long":
        return f"at most {ctx.get('max_length')} item(s)"
    if t == "none_required":
        return "null"
    return err["msg"].removeprefix("Input should be ")


def _tags(where: _Where, discriminator: str) -> list[Any]:
    """The tags a tagged union at ``where`` accepts, in declaration order."""
    ann = _strip(where.ann, None)[0] if where.ann is not None else None
    tags: list[Any] = []
    for arm in typing.get_args(ann) if typing.get_origin(ann) in (Union, types.UnionType) else ():
        if _is_model(arm) and discriminator in arm.model_fields:
            tags.extend(typing.get_args(_strip(arm.model_fields[discriminator].annotation, None)[0]))
    return tags


def _hint(where: _Where) -> str | None:
    extra = where.field.json_schema_extra if where.field is not None else None
    return extra.get("allowed") if isinstance(extra, dict) else None


def validation_problems(exc: ValidationError, raw: Any, schema: type[BaseModel], root: str = "") -> list[Problem]:
    """Every error of ``exc`` (raised validating ``raw`` against ``schema``) as a :class:`Problem`.

    Args:
        exc: the ValidationError.
        raw: the input that was validated (used to name list items and show values).
        schema: the model class that was validated.
        root: dotted path of ``raw`` inside a larger document (e.g. ``"embeddings.budget.options"``).

    Returns:
        One problem per field, in pydantic's order; the arms of a failed union at one path merge
        into one problem.
    """
    problems: list[Problem] = []
    by_path: dict[str, int] = {}  # path -> index of its (union-mergeable) problem
    arms: dict[str, list[str]] = {}
    for err in exc.errors():
        path, where, _ = _walk(tuple(err["loc"]), raw, schema)
        path = join_path(root, path)
        t = err["type"]
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, Problems):
            problems.extend(p.at(path) for p in error.problems)
            continue
        value = err.get("input")
        if t == "extra_forbidden":
            parent = where.parent
            keys = sorted(parent.model_fields) if _is_model(parent) else None
            message = f"unknown key (got {format_value(value)})" + (f"; allowed keys: {keys}" if keys is not None else "")
        elif t == "missing":
            message = "required key is missing"
        elif t in ("union_tag_invalid", "union_tag_not_found"):
            ctx = err.get("ctx") or {}
            disc = str(ctx.get("discriminator", "'kind'")).strip("'")
            path = join_path(path, disc)
            allowed = ", ".join(repr(tag) for tag in _tags(where, disc)) or str(ctx.get("expected_tags", ""))
            if t == "union_tag_invalid":
                message = f"got {format_value(ctx.get('tag'))}; allowed: {allowed}"
            else:
                message = f"required key is missing; allowed: {allowed}"
        elif t in ("value_error", "assertion_error"):
            msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            shown = not isinstance(value, (dict, list, BaseModel)) and not msg.startswith("got ")
            message = f"got {format_value(value)}; {msg}" if shown else msg
        else:
            hint = _hint(where)
            allowed = hint or _allowed(err, where)
            if path in arms and path in by_path:
                # Another arm of the same union (e.g. cardinality: an integer or 'raw'): one line.
                if allowed not in arms[path]:
                    arms[path].append(allowed)
                shown = hint or " or ".join(arms[path])
                problems[by_path[path]] = Problem(path, f"got {format_value(value)}; allowed: {shown}")
                continue
            arms[path] = [allowed]
            by_path[path] = len(problems)
            message = f"got {format_value(value)}; allowed: {allowed}"
        problems.append(Problem(path, message))
    out: list[Problem] = []
    for p in problems:
        if p not in out:
            out.append(p)
    return out
