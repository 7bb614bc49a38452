"""FAISS knowledge-base indexes at scale: exact (flat inner product) vs IVF, on synthetic unit vectors.

    python benchmarks/faiss_kb.py [--sizes 100000 1000000 10000000] [--dim 384] [--queries 1000]
                                  [--nprobe 16] [--max-nlist 4096] [--threads 2] [--singles 200]
                                  [--prealloc auto|always|never]

Vectors: a mixture of 10,000 Gaussian clusters (random unit centres, noise of norm ~1 per vector, so two
vectors of a cluster have cosine ~0.5 and of different clusters ~0), L2-normalised, like sentence embeddings (pure isotropic noise has no neighbourhood structure, the worst
case for any IVF). Generated in chunks from a fixed seed; queries are fresh draws from the same mixture.

For each size N: the indexes kdkit's ``IndexSpec`` builds (``IndexFlatIP``; ``IndexIVFFlat`` with an
inner-product quantiser and ``nprobe`` lists visited), built by adding chunks, one index alive at a time
(10M x 384 fp32 is 15 GB). IVF lists: kdkit's rule 4 sqrt(N), capped at ``--max-nlist`` here (4 sqrt(10M)
= 12,649 lists would need hours of k-means on 2 cores), trained on 64 vectors per list.
Reported: build time (IVF: k-means + adding), index size (the vectors, ids and centroids it holds), query latency at batch 1 (median of 200 single queries) and per query at batch 64, and IVF's
recall@10 against the exact top-10.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

import numpy as np

CHUNK = 250_000


class Mixture:
    """Deterministic chunks of clustered unit vectors."""

    def __init__(self, dim: int, clusters: int = 10_000, noise: float = 1.0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.dim, self.noise, self.seed = dim, noise, seed

    def chunk(self, i: int, n: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, i))
        x = self.centres[rng.integers(0, len(self.centres), n)]
        x = x + (self.noise / np.sqrt(self.dim)) * rng.standard_normal((n, self.dim)).astype(np.float32)
        # float64 by NumPy's promotion (noise / sqrt(dim) is a float64 scalar); FAISS takes float32, which
        # ``add`` converted to: convert here so that every path stores the same values
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def vectors(self, n: int):
        for i, start in enumerate(range(0, n, CHUNK)):
            yield self.chunk(i, min(CHUNK, n - start))


def _latency(index, queries: np.ndarray, singles_n: int, k: int = 10) -> tuple[float, float]:
    """(median ms of ``singles_n`` single queries, ms per query at batch 64)."""
    singles = []
    for q in queries[:singles_n]:
        t0 = time.perf_counter()
        index.search(q[None], k)
        singles.append(time.perf_counter() - t0)
    batches = []
    for start in range(0, min(len(queries), 640), 64):
        t0 = time.perf_counter()
        index.search(queries[start : start + 64], k)
        batches.append((time.perf_counter() - t0) / 64)
    return 1000 * statistics.median(singles), 1000 * statistics.median(batches)


def _preallocate(n: int, args: argparse.Namespace) -> bool:
    """Fill preallocated index storage instead of ``add``: FAISS grows its storage by doubling, so at 10M
    x 384 (15 GB) the old and the new buffer (8 + 16 GB) no longer fit in 24 GB. Same index, same search."""
    if args.prealloc != "auto":
        return args.prealloc == "always"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return n * args.dim * 4 > ram / 3


def _flat_prealloc(n: int, dim: int, mix: Mixture, faiss):
    """An IndexFlatIP whose vector storage is sized once and filled chunk by chunk."""
    flat = faiss.IndexFlatIP(dim)
    flat.codes.resize(n * dim * 4)
    storage = faiss.rev_swig_ptr(flat.codes.data(), n * dim * 4).view(np.float32).reshape(n, dim)
    start = 0
    for x in mix.vectors(n):
        storage[start : start + len(x)] = x
        start += len(x)
    flat.ntotal = n
    return flat


def _ivf_prealloc(ivf, n: int, mix: Mixture, faiss) -> float:
    """Fill a trained IndexIVFFlat like ``add`` does (nearest centroid, ids 0..n-1 in order), with every
    list sized once: a first pass assigns and counts, a second pass writes. Returns the seconds the second
    pass spent regenerating the vectors (not index work: the caller leaves it out of the build time)."""
    assign = np.empty(n, dtype=np.int64)
    start = 0
    for x in mix.vectors(n):
        assign[start : start + len(x)] = ivf.quantizer.search(x, 1)[1][:, 0]
        start += len(x)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    for list_no, count in enumerate(np.bincount(assign, minlength=ivf.nlist).tolist()):
        lists.resize(list_no, count)
    filled = np.zeros(ivf.nlist, dtype=np.int64)
    start, regenerate = 0, 0.0
    for i, size in enumerate(min(CHUNK, n - s) for s in range(0, n, CHUNK)):
        t0 = time.perf_counter()
        x = mix.chunk(i, size)
        regenerate += time.perf_counter() - t0
        a = assign[start : start + size]
        order = np.argsort(a, kind="stable")
        bounds = np.flatnonzero(np.diff(a[order])) + 1
        for rows in np.split(order, bounds):
            list_no = int(a[rows[0]])
            ids = np.ascontiguousarray(rows + start, dtype=np.int64)
            codes = np.ascontiguousarray(x[rows]).view(np.uint8)
            lists.update_entries(
                list_no, int(filled[list_no]), len(rows), faiss.swig_ptr(ids), faiss.swig_ptr(codes)
            )
            filled[list_no] += len(rows)
        start += size
    ivf.ntotal = n
    return regenerate


def bench_size(n: int, args: argparse.Namespace, faiss) -> list[str]:
    mix = Mixture(args.dim)
    queries = Mixture(args.dim, seed=0).chunk(10_000_019, args.queries)  # a stream index no base chunk uses
    rows = []

    prealloc = _preallocate(n, args)
    t0 = time.perf_counter()
    flat = _flat_prealloc(n, args.dim, mix, faiss) if prealloc else faiss.IndexFlatIP(args.dim)
    if not prealloc:
        for x in mix.vectors(n):
            flat.add(x)
    build, mem = time.perf_counter() - t0, flat.ntotal * flat.code_size
    _, truth = flat.search(queries, 10)
    one, per = _latency(flat, queries, args.singles)
    rows.append(f"| {n:,} | exact (flat) | {build:.1f} | {mem / 2**30:.2f} | {one:.2f} | {per:.3f} | 1.000 |")
    print(rows[-1], flush=True)
    del flat
    gc.collect()

    nlist = min(int(4 * np.sqrt(n)), args.max_nlist, n // 39)
    t0 = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.dim), args.dim, nlist, faiss.METRIC_INNER_PRODUCT)
    train = np.concatenate([c for c, _ in zip(mix.vectors(64 * nlist), range(10**9), strict=False)])
    ivf.train(train[: 64 * nlist])
    del train
    regenerate = 0.0
    if prealloc:
        regenerate = _ivf_prealloc(ivf, n, mix, faiss)
    else:
        for x in mix.vectors(n):
            ivf.add(x)
    build = time.perf_counter() - t0 - regenerate
    mem = ivf.ntotal * (ivf.code_size + 8) + nlist * args.dim * 4  # codes + ids per vector, centroids
    ivf.nprobe = args.nprobe
    _, ids = ivf.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist(), strict=True)])
    one, per = _latency(ivf, queries, args.singles)
    rows.append(
        f"| {n:,} | IVF ({nlist:,} lists, nprobe {args.nprobe}) | {build:.1f} | {mem / 2**30:.2f} | {one:.2f} | "
        f"{per:.3f} | {recall:.3f} |"
    )
    print(rows[-1], flush=True)
    del ivf
    gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--max-nlist", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--singles", type=int, default=200, help="single queries timed (median reported)")
    parser.add_argument(
        "--prealloc",
        choices=["auto", "always", "never"],
        default="auto",
        help="fill preallocated index storage (auto: when the vectors exceed a third of the RAM)",
    )
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    faiss.cvar.distance_compute_blas_threshold = 8  # as kdkit.retrieval.index.search does
    print("command:", " ".join(["python", *sys.argv]), flush=True)
    rows = []
    for n in args.sizes:
        rows += bench_size(n, args, faiss)
    print(
        f"\nFAISS {faiss.__version__}, dim {args.dim}, {args.threads} CPU threads, {args.queries} queries, top-10; "
        "index size = the vectors, ids and centroids it holds\n"
    )
    print(
        "| vectors | index | build (s) | index size (GiB) | latency, batch 1 (ms) | per query, batch 64 (ms) | recall@10 |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
