"""ReAugKD's knowledge base: build (teacher embeddings, projection head), store (FAISS + safetensors),
search, aggregate, and predict with retrieval."""

from kdkit.retrieval.build import KBSettings, build_kb, train_projection
from kdkit.retrieval.index import IndexSpec, build_index, search
from kdkit.retrieval.kb import KnowledgeBase
from kdkit.retrieval.predictor import ReAugPredictor, RetrievalSettings, combine

__all__ = [
    "IndexSpec",
    "KBSettings",
    "KnowledgeBase",
    "ReAugPredictor",
    "RetrievalSettings",
    "build_index",
    "build_kb",
    "combine",
    "search",
    "train_projection",
]
