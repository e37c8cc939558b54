"""Feature specs: the schema of a data set's columns, loaded from ``features/*.yaml``.

The specs shipped with recsys are found by name from any install: :func:`builtin_spec`,
:func:`builtin_spec_names`, :func:`builtin_spec_path`.

A spec lists every column a data set holds after ingest: sparse id features (single- or
multi-valued), dense float features and the label. It is the contract between ingest (which
writes parquet and vocabularies to it), batching (which builds KeyedJaggedTensors from it) and
the embedding collections (which build tables from it).

Ids of a sparse feature with an integer ``cardinality`` lie in ``[0, cardinality)`` once ingested:
index 0 is the reserved out-of-vocabulary (OOV) row, indices ``1..V`` are vocabulary ids ordered by
descending training frequency. On ingest input, ``cardinality`` is the *cap*: the vocabulary keeps
at most ``cardinality - 1`` ids; the manifest's resolved spec holds the real ``V + 1``.
``cardinality: raw`` keeps the raw int64 ids (no vocabulary); only hashing methods can embed them.

Example::

    name: criteo
    features:
      - {name: label, kind: label}
      - {name: I1, kind: dense, transform: log1p}
      - {name: C1, kind: sparse, cardinality: 10000000, embedding_dim: 16}
      - {name: genres, kind: sparse, cardinality: 20, max_length: 6, pooling: mean, tower: item}

Loading validates everything at once and raises :class:`SpecError` listing each problem with
its dotted path (``features[C1].embedding_dim``), the value received and what is allowed.
"""

from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recsys.features.compression import CompressionSpec, FeatureGroup, FullCompression
from recsys.features.errors import NAME_PATTERN as _NAME_PATTERN
from recsys.features.errors import Problem, Problems, SpecError, validation_problems
from recsys.features.methods import SCHEMAS


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SparseFeature(_Spec):
    """A categorical id feature, embedded by one or more TorchRec tables.

    Args:
        name: column name (an identifier).
        cardinality: ids lie in ``[0, cardinality)`` (0 = OOV); on ingest input, the vocabulary cap.
            ``"raw"``: keep raw int64 ids, to be hashed by the compression method.
        max_length: 1 for single-valued; > 1 for multi-valued bags (longer lists are truncated at
            ingest and counted in the manifest).
        pooling: how a bag's vectors are pooled: ``sum`` or ``mean``.
        tower: ``user``, ``item`` or ``context`` (two-tower models use user and item features).
        embedding_dim: output dimension of the feature's embedding (a multiple of 4 for FBGEMM).
        min_count: ids seen fewer times than this in the training split map to OOV.
        compression: how the ids become table rows (see :mod:`recsys.features.compression`).
        history_of: for a history feature (a user's earlier items, built at ingest / synth), the
            single-valued sparse feature whose ids it holds, in that feature's id encoding.
    """

    kind: Literal["sparse"]
    name: str = Field(pattern=_NAME_PATTERN)
    cardinality: Union[Annotated[int, Field(ge=2)], Literal["raw"]] = Field(
        json_schema_extra={"allowed": "an integer >= 2, or 'raw' for unbounded ids to be hashed"}
    )
    max_length: Annotated[int, Field(ge=1)] = 1
    pooling: Literal["sum", "mean"] = "sum"
    tower: Literal["user", "item", "context"] = "context"
    embedding_dim: Annotated[int, Field(ge=4, le=4096)] = 16
    min_count: Annotated[int, Field(ge=1)] = 1
    compression: CompressionSpec = FullCompression()
    history_of: str | None = None

    @field_validator("embedding_dim")
    @classmethod
    def _dim_multiple_of_4(cls, v: int) -> int:
        if v % 4:
            raise ValueError(f"got {v}; FBGEMM's fused kernels need a multiple of 4 (e.g. {v + 4 - v % 4})")
        return v

    @model_validator(mode="after")
    def _raw_needs_hashing(self) -> "SparseFeature":
        if self.cardinality == "raw" and self.compression.kind == "full":
            raise Problems([Problem(
                "compression.kind",
                "got 'full' but cardinality 'raw' (unbounded ids) cannot use compression kind 'full', which needs "
                "a vocabulary: give an integer cardinality or a hashing compression",
            )])
        problems = _compression_problems(self)
        if problems:
            raise Problems(problems)
        return self

    @property
    def multi_valued(self) -> bool:
        return self.max_length > 1

    @property
    def has_vocab(self) -> bool:
        return self.cardinality != "raw"


def _compression_problems(f: "SparseFeature") -> list[Problem]:
    """Checks of a feature's compression that need its cardinality or dim (paths relative to the feature);
    each method declares its own (``SCHEMA.feature_problems`` in :mod:`recsys.features.methods`)."""
    c = f.compression
    schema = SCHEMAS[c.kind]
    if f.cardinality == "raw" and schema.needs_vocab:
        hashing = " / ".join(k for k, s in SCHEMAS.items() if not s.needs_vocab)
        return [Problem(
            "compression.kind",
            f"got {c.kind!r}, which needs dense vocabulary ids but cardinality is 'raw'; "
            f"give an integer cardinality or use {hashing}",
        )]
    return schema.feature_problems(c, f.cardinality, f.embedding_dim)


class DenseFeature(_Spec):
    """A float feature. ``transform: log1p`` applies ``log(1 + max(x, 0))`` at ingest; missing -> 0."""

    kind: Literal["dense"]
    name: str = Field(pattern=_NAME_PATTERN)
    transform: Literal["identity", "log1p"] = "identity"


class LabelFeature(_Spec):
    """The training target: a click (0/1) or a rating, stored as float32."""

    kind: Literal["label"]
    name: str = Field(pattern=_NAME_PATTERN)


Feature = Annotated[Union[SparseFeature, DenseFeature, LabelFeature], Field(discriminator="kind")]


class DatasetSpec(_Spec):
    """All columns of one data set.

    Args:
        name: data set name.
        description: free text.
        timestamp: name of an int64 column of event times (seconds), used for time-based splits.
        features: the columns, in the order they are stored.
        groups: multiplexed feature groups (``unified`` compression): each declares the shared
            tables; a feature joins with ``compression: {kind: unified, group: NAME}``.
    """

    name: str = Field(pattern=_NAME_PATTERN)
    description: str = ""
    timestamp: str | None = Field(default=None, pattern=_NAME_PATTERN)
    features: list[Feature] = Field(min_length=1)
    groups: list[FeatureGroup] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_columns(self) -> "DatasetSpec":
        seen: set[str] = set()
        dupes = []
        for f in self.features:
            if f.name in seen:
                dupes.append(f.name)
            seen.add(f.name)
        problems: list[Problem] = []
        if dupes:
            problems.append(Problem("features", f"got duplicate feature names {sorted(set(dupes))}; each column needs one entry"))
        labels = [f.name for f in self.features if f.kind == "label"]
        if len(labels) > 1:
            problems.append(Problem("features", f"got {len(labels)} label features {labels}; at most one is allowed"))
        if self.timestamp is not None and self.timestamp in seen:
            problems.append(Problem(
                "timestamp",
                f"got {self.timestamp!r}: timestamp column {self.timestamp!r} is also listed as a feature; list it only as timestamp",
            ))
        if not self.sparse:
            problems.append(Problem("features", "got no sparse feature; a data set needs at least one"))
        problems.extend(self._group_problems())
        problems.extend(self._history_problems())
        if problems:
            raise Problems(problems)
        return self

    def _history_problems(self) -> list[Problem]:
        sparse = {f.name: f for f in self.sparse}
        problems = []
        for f in self.sparse:
            if f.history_of is None:
                continue
            where = f"features[{f.name}].history_of"
            target = sparse.get(f.history_of)
            if target is None:
                problems.append(Problem(where, f"got {f.history_of!r}, not a sparse feature; known: {sorted(sparse)}"))
            elif target.multi_valued or target.history_of is not None:
                problems.append(Problem(where, f"got {f.history_of!r}, which is multi-valued or a history itself; name a single-valued id feature"))
            elif target.has_vocab != f.has_vocab:
                problems.append(Problem(where, f"got {f.history_of!r}: one has a vocabulary and the other is 'raw'; both must encode ids alike"))
            if not f.multi_valued:
                problems.append(Problem(f"features[{f.name}].max_length", f"got {f.max_length}; a history feature is a list: give max_length > 1"))
        return problems

    def _group_problems(self) -> list[Problem]:
        """Unified groups: every reference resolves, and a group's features agree on the dim."""
        problems: list[Problem] = []
        groups: dict[str, FeatureGroup] = {}
        for g in self.groups:
            if g.name in groups:
                problems.append(Problem(f"groups[{g.name}]", "duplicate group name; each group needs one entry"))
            groups[g.name] = g
        members: dict[str, list[SparseFeature]] = {name: [] for name in groups}
        for f in self.sparse:
            if f.compression.kind != "unified":
                continue
            if f.compression.group not in groups:
                problems.append(Problem(
                    f"features[{f.name}].compression.group",
                    f"got {f.compression.group!r}, which is not declared; "
                    f"declared groups: {sorted(groups)} (add it to the spec's `groups:` list)",
                ))
                continue
            members[f.compression.group].append(f)
        for name, fs in members.items():
            g = groups[name]
            if not fs:
                problems.append(Problem(
                    f"groups[{name}]",
                    f"no feature uses this group; remove it or give features `compression: {{kind: unified, group: {name}}}`",
                ))
                continue
            first = fs[0]
            conflicting = [f for f in fs if f.embedding_dim != first.embedding_dim]
            for f in conflicting:
                problems.append(Problem(
                    f"features[{f.name}].embedding_dim",
                    f"got {f.embedding_dim} but unified group {name!r} shares "
                    f"its table(s) at dim {first.embedding_dim} (feature {first.name}); give every feature "
                    "of a group the same embedding_dim, or move it to another group",
                ))
            dim = first.embedding_dim
            if not conflicting and (dim % g.num_chunks or (dim // g.num_chunks) % 4):
                problems.append(Problem(
                    f"groups[{name}].num_chunks",
                    f"got {g.num_chunks}; embedding_dim {dim} of features "
                    f"{[f.name for f in fs]} must split into {g.num_chunks} chunks of a multiple of 4",
                ))
        return problems

    # Views by kind, in declaration order.
    @property
    def sparse(self) -> list[SparseFeature]:
        return [f for f in self.features if isinstance(f, SparseFeature)]

    @property
    def dense(self) -> list[DenseFeature]:
        return [f for f in self.features if isinstance(f, DenseFeature)]

    @property
    def label(self) -> LabelFeature | None:
        return next((f for f in self.features if isinstance(f, LabelFeature)), None)

    def feature(self, name: str) -> SparseFeature | DenseFeature | LabelFeature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature {name!r} in spec {self.name!r}; known: {[f.name for f in self.features]}")

    def with_cardinalities(self, cardinalities: dict[str, int]) -> "DatasetSpec":
        """A copy whose sparse features have the given (resolved) cardinalities."""
        features = [
            f.model_copy(update={"cardinality": cardinalities[f.name]})
            if isinstance(f, SparseFeature) and f.name in cardinalities
            else f
            for f in self.features
        ]
        return self.model_copy(update={"features": features})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def spec_from_dict(raw: Any, source: str = "<dict>") -> DatasetSpec:
    """Validate a parsed spec; raises :class:`SpecError` with every problem at once."""
    if not isinstance(raw, dict):
        raise SpecError(source, [f"<spec>: got {type(raw).__name__}; expected a mapping with 'name' and 'features'"])
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(source, [p.line("<spec>") for p in validation_problems(exc, raw, DatasetSpec)]) from None


def load_spec(path: str | Path) -> DatasetSpec:
    """Load and validate a feature spec YAML file.

    Raises:
        SpecError: the file is missing, not YAML, or fails validation (all problems listed).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(str(path), [f"not valid YAML: {exc}"]) from None
    return spec_from_dict(raw, str(path))


# -- the specs shipped with recsys ----------------------------------------------------------
#
# They live in the top-level ``features/`` folder of the repository (the documented place to read
# and edit them) and are package data of ``recsys.features`` under ``specs/``: in the source tree
# ``recsys/features/specs`` is a symlink to ``../../features``; a wheel (``pip install .``) holds real
# copies (pyproject ``[tool.setuptools.package-data]``). Every lookup goes through importlib.resources,
# so an installed recsys finds them wherever it is installed, from any working directory.


def _shipped() -> Traversable:
    return importlib.resources.files("recsys.features").joinpath("specs")


def builtin_spec_names() -> list[str]:
    """Names of the feature specs shipped with recsys (``criteo``, ``movielens``, ...), sorted."""
    return sorted(p.name[: -len(".yaml")] for p in _shipped().iterdir() if p.name.endswith(".yaml") and p.is_file())


def builtin_spec_path(name: str) -> Path:
    """The file of a shipped spec, e.g. as the default of a ``--spec`` argument.

    Raises:
        ValueError: no shipped spec of that name (the known names are listed).
    """
    item = _shipped().joinpath(f"{name}.yaml")
    if not item.is_file():
        raise ValueError(f"no built-in feature spec {name!r}; known: {builtin_spec_names()}")
    # A regular (unzipped) install, as pip and setuptools make, has real files.
    return Path(str(item))


def builtin_spec(name: str) -> DatasetSpec:
    """Load and validate a spec shipped with recsys, by name (``builtin_spec("criteo")``).

    Raises:
        ValueError: no shipped spec of that name (the known names are listed).
        SpecError: the shipped file fails validation.
    """
    item = _shipped().joinpath(f"{name}.yaml")
    if not item.is_file():
        raise ValueError(f"no built-in feature spec {name!r}; known: {builtin_spec_names()}")
    source = str(item)
    try:
        raw = yaml.safe_load(item.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"not valid YAML: {exc}"]) from None
    return spec_from_dict(raw, source)


FEATURES_DIR = Path(str(_shipped()))
"""Deprecated: the folder of the shipped specs; use :func:`builtin_spec_path` / :func:`builtin_spec_names`."""
