"""Compressed embedding collections: every compression compiles to plain TorchRec tables.

Public API::

    from recsys.embeddings import build_embedding_collection, compile_plan, solve_budget
    collection = build_embedding_collection(spec)          # CompressedEmbeddingBagCollection
    print(collection.plan().format())                      # tables, transforms, exact bytes
"""

from recsys.embeddings.budget import BudgetSolution, solve_budget
from recsys.embeddings.builder import build_embedding_collection, build_method, compile_plan
from recsys.embeddings.collection import CompressedEmbeddingBagCollection
from recsys.embeddings.methods.registry import FAMILIES
from recsys.embeddings.export import CollectionExportWrapper, export_collection, quantize_collection
from recsys.embeddings.naive import NaiveEmbeddingBagCollection
from recsys.embeddings.plan import EmbeddingPlan, FeaturePlan, ProjectionSpec, TableSpec

__all__ = [
    "BudgetSolution",
    "CollectionExportWrapper",
    "CompressedEmbeddingBagCollection",
    "NaiveEmbeddingBagCollection",
    "EmbeddingPlan",
    "FAMILIES",
    "FeaturePlan",
    "ProjectionSpec",
    "TableSpec",
    "build_embedding_collection",
    "build_method",
    "compile_plan",
    "export_collection",
    "quantize_collection",
    "solve_budget",
]
