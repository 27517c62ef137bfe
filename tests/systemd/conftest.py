"""The real-systemd tests boot a container; they run only when asked for by marker
(`pytest -m systemd tests/systemd`, or `make systemd-test`), never in a plain `pytest`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect tests marked `systemd` unless the -m expression names that marker."""
    if "systemd" in (config.getoption("markexpr") or ""):
        return
    chosen = [item for item in items if item.get_closest_marker("systemd") is None]
    if len(chosen) != len(items):
        config.hook.pytest_deselected(
            items=[item for item in items if item.get_closest_marker("systemd") is not None]
        )
        items[:] = chosen
