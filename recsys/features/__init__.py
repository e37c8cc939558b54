"""Feature specs (schema + validation) and compression specs."""

from recsys.features.compression import CompressionSpec, FullCompression
from recsys.features.spec import (
    DatasetSpec,
    DenseFeature,
    LabelFeature,
    SparseFeature,
    SpecError,
    builtin_spec,
    load_spec,
    spec_from_dict,
)

__all__ = [
    "CompressionSpec",
    "DatasetSpec",
    "DenseFeature",
    "FullCompression",
    "LabelFeature",
    "SparseFeature",
    "SpecError",
    "builtin_spec",
    "load_spec",
    "spec_from_dict",
]
