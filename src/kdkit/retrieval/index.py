"""FAISS indexes over L2-normalised keys, searched by inner product (= cosine similarity).

``flat`` is exact (``IndexFlatIP``) and the default; ``ivf`` (``IndexIVFFlat``, inner-product quantiser,
``nlist`` lists of which ``nprobe`` are visited per query) and ``hnsw`` (``IndexHNSWFlat``, graph with
``hnsw_m`` links per node, ``ef_search`` candidates per query) are approximate and for large KBs.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from kdkit.errors import KdkitError
from kdkit.io import publish

IndexKind = Literal["flat", "ivf", "hnsw"]
_MISSING_SIM = -1e4  # similarity given to "no neighbour found" (IVF with few lists): softmax weight 0
# Exact search answers this many queries or more with one BLAS matrix product. faiss-cpu 1.15 sets the
# threshold to 128,000, which sends every smaller batch through its per-query scan: measured on 2 CPU
# cores, 67k x 384 keys, top-16 (1 thread): 32 queries 357 ms scan vs 61 ms BLAS, 256 queries 2.9 s vs
# 0.27 s; a single query is faster scanned (8 ms vs 40 ms).
_BLAS_MIN_QUERIES = 8


@dataclass
class IndexSpec:
    kind: IndexKind = "flat"
    nlist: int | None = None  # ivf: number of lists; None: 4 * sqrt(N), at most N / 39 (FAISS's minimum)
    nprobe: int = 16  # ivf: lists visited per query
    hnsw_m: int = 32  # hnsw: links per node
    ef_search: int = 64  # hnsw: candidate list size per query


def build_index(keys: np.ndarray, spec: IndexSpec) -> faiss.Index:
    """An index over ``keys`` (N, D) float32, already L2-normalised."""
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    n, d = keys.shape
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif spec.kind == "ivf":
        nlist = spec.nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        if nlist > n:
            raise KdkitError(f"index nlist={nlist} exceeds the {n} knowledge-base entries; lower it")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(keys)
        index.nprobe = min(spec.nprobe, nlist)
    elif spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = spec.ef_search
    else:
        raise KdkitError(f"unknown index kind '{spec.kind}'; use flat, ivf or hnsw")
    index.add(keys)
    return index


def search(
    index: faiss.Index, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` keys by inner product: (similarities (Q, k) float32, ids (Q, k) int64), best first.

    ``exclude`` (Q,) names one key id per query that must not be returned (the query's own entry when the
    queries are the KB's training examples; -1 for none). Missing neighbours (approximate indexes with too
    few candidates) get id -1 and similarity -1e4.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    faiss.cvar.distance_compute_blas_threshold = _BLAS_MIN_QUERIES  # process-wide faiss setting
    k = min(k, index.ntotal - (exclude is not None))
    if k < 1:
        raise KdkitError(f"the knowledge base has {index.ntotal} entries: too few to retrieve from")
    extra = 1 if exclude is not None else 0
    sims, ids = index.search(queries, k + extra)
    if exclude is not None:
        keep = ids != np.asarray(exclude).reshape(-1, 1)  # (Q, k + 1)
        keep[keep.all(axis=1), -1] = False  # own entry not among them: drop the last instead
        sims = sims[keep].reshape(len(queries), k)
        ids = ids[keep].reshape(len(queries), k)
    sims = np.where(ids < 0, _MISSING_SIM, sims).astype(np.float32)
    return sims, ids.astype(np.int64)


def save_index(index: faiss.Index, path: str | Path) -> None:
    """Write ``index`` to a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_index(path: str | Path) -> faiss.Index:
    try:
        return faiss.read_index(str(path))
    except RuntimeError as err:
        raise KdkitError(
            f"cannot read the FAISS index {path} ({str(err).splitlines()[0]}); rebuild the KB"
        ) from None
