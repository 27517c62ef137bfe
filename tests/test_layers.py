"""Who may import whom: the layers of docs/ARCHITECTURE.md, checked on the source.

A module imports only from its own layer or those below; the outside systems each have their
few owners (boto3 and botocore, sqlite). A new module must be placed in a layer here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "agent"

LAYERS: tuple[tuple[str, ...], ...] = (
    # 0. pure: plain data in, plain data out; no I/O, no clock of their own
    (
        "errors",
        "units",
        "redact",
        "sessions",
        "planning",
        "checksums",
        "throttle",
        "s3errors",
        "settings",
        "config_values",
    ),
    # 1. one module (or package) per outside system
    ("config", "scan", "lock", "logs", "notify", "state", "transfer", "direct", "watch"),
    # 2. the engine and what reads or judges through the adapters
    ("health", "engine", "upload", "observe", "verify", "hooks", "progress", "fleet"),
    # 3. use of the engine and observation together; the one status report
    ("ingest", "report", "metrics"),
    # 4. use cases and the daemon's parts
    ("actions", "limits", "vitals", "worker", "doctor", "disk_pause"),
    # 5. the daemon, the CLI's output, the demo
    ("service", "cli_output", "demo"),
    # 6. entry points
    ("cli", "__main__"),
)

# Outside libraries and the only top-level modules (or packages) that may import them.
OWNERS = {
    "boto3": {"transfer", "fleet", "doctor", "demo"},
    "botocore": {"transfer", "direct", "s3errors", "fleet", "doctor", "cli_output"},
    "sqlite_utils": {"state"},
    "sqlite3": {"state", "actions"},
    "watchdog": {"watch"},
    "systemd": {"logs", "notify"},
}


def layer_of(name: str) -> int:
    for number, members in enumerate(LAYERS):
        if name in members:
            return number
    raise AssertionError(f"agent/{name} is in no layer of tests/test_layers.py: place it")


def top(module: str) -> str:
    """`agent.state.db` → `state`; `agent` itself (its version) → `errors`'s layer."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "errors"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "agent":
                found.update(f"agent.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


MODULES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_go_down_the_layers_only(path: Path) -> None:
    owner = path.relative_to(ROOT).parts[0].removesuffix(".py")
    if owner == "__init__":
        return
    own = layer_of(owner)
    for module in imports_of(path):
        if module.startswith("agent.") or module == "agent":
            target = top(module)
            if target in ("__version__",):
                continue
            assert layer_of(target) <= own, f"agent/{owner} (layer {own}) imports {module}"
        else:
            library = module.split(".")[0]
            allowed = OWNERS.get(library)
            assert allowed is None or owner in allowed, f"agent/{owner} imports {library}"


def test_every_module_is_placed_in_a_layer() -> None:
    names = {path.relative_to(ROOT).parts[0].removesuffix(".py") for path in MODULES}
    for name in names - {"__init__"}:
        layer_of(name)
