from __future__ import annotations

import pytest

from kdkit.errors import KdkitError
from kdkit.registry import Registry


def test_register_get_list() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)
    reg.register("beta", 2)
    assert reg.get("alpha") == 1 and reg.names() == ["alpha", "beta"] and "beta" in reg and len(reg) == 2


def test_duplicate_and_unknown() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha", 1)
    with pytest.raises(KdkitError, match="registered twice"):
        reg.register("alpha", 2)
    with pytest.raises(KdkitError, match="unknown widget 'alpah' \\(did you mean 'alpha'\\?\\)"):
        reg.get("alpah")
