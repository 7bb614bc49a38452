"""Docs cannot drift from the dataclasses; every shipped config validates; the demo config is shipped."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from kdkit.config import load_config
from kdkit.demo import DEMO_CONFIG
from kdkit.docgen import SECTIONS, field_docs, generate
from kdkit.methods import METHODS
from kdkit.validate import shipped_configs, validate
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]


def test_config_docs_are_current() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == generate(), (
        "docs/config.md is stale: run `python -m kdkit.docgen > docs/config.md`"
    )


def test_every_config_field_is_documented() -> None:
    classes = [cls for _, cls in SECTIONS] + [METHODS.get(n).Config for n in METHODS]
    for cls in classes:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no inline doc comment"


def test_readme_lists_every_method_and_shipped_config() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in METHODS:
        assert f"`{name}`" in readme
    for path in shipped_configs():
        assert path.name in readme, f"README does not mention {path.name}"


CONFIGS = shipped_configs()


def test_configs_are_shipped() -> None:
    assert len(CONFIGS) >= 5


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is absent")
@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDKIT_DATA_ROOT", str(SHARED_DATA))  # recipes find their local copies (data.local)
    lines = validate(path)
    assert any(line.startswith("data:") for line in lines)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_name_their_real_source(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a data root a recipe reads the real dataset (a hub name or a packaged asset), never a path of
    this repository's surroundings."""
    monkeypatch.delenv("KDKIT_DATA_ROOT", raising=False)
    raw = yaml.safe_load(path.read_text())
    assert "root" not in raw["data"] and "shared" not in path.read_text()
    data = load_config(path).data
    assert data.dataset or data.train in ("tweets",), path.name


def test_demo_config_is_the_shipped_recipe() -> None:
    shipped = yaml.safe_load((ROOT / "configs" / "tweets_minilm2l_from_minilm6_kd.yaml").read_text())
    assert load_config(shipped) == load_config(DEMO_CONFIG)
