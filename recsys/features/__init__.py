"""Feature specs (schema + validation) and compression specs."""

from recsys.features.compression import (
    COMPRESSION_KINDS,
    CompressionSpec,
    FeatureGroup,
    FullCompression,
    HashedCompression,
    MixedDimCompression,
    MultiHashCompression,
    QRCompression,
    UnifiedCompression,
)
from recsys.features.spec import (
    DatasetSpec,
    DenseFeature,
    LabelFeature,
    SparseFeature,
    SpecError,
    builtin_spec,
    builtin_spec_names,
    builtin_spec_path,
    load_spec,
    spec_from_dict,
)

__all__ = [
    "COMPRESSION_KINDS",
    "CompressionSpec",
    "FeatureGroup",
    "HashedCompression",
    "MixedDimCompression",
    "MultiHashCompression",
    "QRCompression",
    "UnifiedCompression",
    "DatasetSpec",
    "DenseFeature",
    "FullCompression",
    "LabelFeature",
    "SparseFeature",
    "SpecError",
    "builtin_spec",
    "builtin_spec_names",
    "builtin_spec_path",
    "load_spec",
    "spec_from_dict",
]
