"""The import graph points downward only: no fts_dist module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fts_dist"
LAYERS = {  # top-level module or subpackage of fts_dist -> layer (higher may import lower or equal)
    "_version": 0,
    "errors": 0,
    "schedule": 1,
    "coordinator": 2,
    "gen": 2,
    "checkpoint_manifest": 2,
    "checkpoint_views": 2,
    "checkpoint_io": 3,
    "log": 3,
    "strategies": 3,
    "optim": 3,
    "memory": 3,
    "export": 3,
    "adapters": 4,
    "runtime": 4,
    "callbacks": 5,
    "cli": 6,
    "demo": 6,
    "examples": 6,
    "__init__": 7,
}


def part_of(dotted: str) -> str:
    return dotted.split(".")[1] if dotted.count(".") else "__init__"


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fts_dist"):
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.startswith("fts_dist")]
    return names


def test_every_module_is_in_a_layer() -> None:
    parts = {p.stem if p.parent == PACKAGE else p.relative_to(PACKAGE).parts[0] for p in PACKAGE.rglob("*.py")}
    assert parts <= set(LAYERS), f"assign these to a layer: {sorted(parts - set(LAYERS))}"


def test_imports_point_downward_only() -> None:
    upward = []
    for path in PACKAGE.rglob("*.py"):
        own = path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]
        for target in imports_of(path):
            if target == "fts_dist" and own == "__init__":
                continue
            if LAYERS[part_of(target)] > LAYERS[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {target}")
    assert not upward, upward


STRATEGY_INTERNALS = ("deepspeed", "torch.distributed.fsdp", "torch.nn.parallel", "pytorch_lightning.strategies")


def test_the_optimizer_surgery_and_the_pure_layers_know_no_strategy() -> None:
    """``fts_dist/optim`` works on a bare torch optimizer, and schedule and coordinator are pure: none of them imports
    a strategy's internals (those belong to ``fts_dist/adapters``, one folder per family)."""
    found = []
    for part in ("optim", "schedule", "coordinator"):
        for path in (PACKAGE / part).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
                found += [
                    f"{path.relative_to(PACKAGE.parent)} imports {n}" for n in names if n.startswith(STRATEGY_INTERNALS)
                ]
    assert not found, found
