"""The package's parts form layers: models <- diffusion <- pipeline <- train / distill <- launch,
with parallel, media and text at the bottom, and no import cycles between parts."""

from __future__ import annotations

import ast
import collections
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jax_i2v"
# Each part, and the parts it must not import (directly or through others).
FORBIDDEN = {
    "parallel": {"models", "diffusion", "pipeline", "train", "distill", "data", "eval"},
    "media": {"models", "diffusion", "pipeline", "train", "distill", "data", "eval"},
    "text": {"models", "diffusion", "pipeline", "train", "distill", "data", "eval"},
    "models": {"diffusion", "pipeline", "train", "distill", "data", "eval", "config_utils", "convert"},
    "diffusion": {"pipeline", "train", "distill", "eval"},
    "pipeline": {"train", "distill", "eval"},
    "data": {"pipeline", "train", "distill", "eval"},
    "train": {"distill", "eval"},
}


def _part(module: str) -> str | None:
    """jax_i2v.models.unet -> models; jax_i2v.pipeline -> pipeline; jax_i2v -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "jax_i2v" else None


def import_graph() -> dict[str, set[str]]:
    """Part -> parts it imports, from every import statement (module level or inside functions)."""
    graph = collections.defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = _part(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "jax_i2v":
                targets = [f"jax_i2v.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            for target in filter(None, map(_part, targets)):
                if source and target != source:
                    graph[source].add(target)
    return graph


def _reachable(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_parts_import_each_other_without_cycles():
    graph = import_graph()
    assert len(graph) > 10  # the walk found the package
    cycles = sorted(part for part in graph if part in _reachable(graph, part))
    assert not cycles, {part: sorted(graph[part] & set(cycles)) for part in cycles}


def test_no_part_imports_a_layer_above_it():
    graph = import_graph()
    upward = {part: sorted(_reachable(graph, part) & above) for part, above in FORBIDDEN.items() if _reachable(graph, part) & above}
    assert not upward, upward
