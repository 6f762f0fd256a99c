"""The package map of docs/architecture.md holds: each layer imports only from layers below it
(function-local imports count), so there is no import cycle between folders; no module is
over 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "lsmerge"
MAX_LINES = 450

#: lowest first; a module imports from lower layers and from its own entry (folder or module), never sideways
LAYERS = [
    ["lsmerge.errors"],
    ["lsmerge", "lsmerge.torch_options", "lsmerge.memory"],
    ["lsmerge.io"],
    ["lsmerge.data"],
    ["lsmerge.models"],
    ["lsmerge.codecs"],
    ["lsmerge.merge.weight"],
    ["lsmerge.merge.latent", "lsmerge.merge.hidden"],
    ["lsmerge.evaluate"],
    ["lsmerge.callbacks", "lsmerge.export", "lsmerge.inspect", "lsmerge.fetch", "lsmerge.experts", "lsmerge.importance", "lsmerge.perturb"],
    ["lsmerge.lightning_cli"],
    ["lsmerge.cli"],
    ["lsmerge.results"],  # runs commands through cli.main
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer entry a module belongs to (its longest listed prefix)."""
    best = max((u for layer in LAYERS for u in layer if module == u or module.startswith(u + ".")), key=len)
    return best


def level(module: str) -> int:
    u = unit(module)
    return next(i for i, layer in enumerate(LAYERS) if u in layer)


def imports(path: Path) -> set[str]:
    """lsmerge modules imported anywhere in the file (function bodies included)."""
    pkg = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lsmerge")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("lsmerge"):
                out.add(base)
    return out


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_on_the_map():
    for path in modules():
        assert unit(module_name(path)), module_name(path)


def test_layers_import_only_downward():
    upward = []
    for path in modules():
        me = module_name(path)
        for target in imports(path):
            if target == "lsmerge" or target.startswith(me + ".") or me.startswith(target + "."):
                continue  # the package root, own submodules and own package __init__
            same_unit = unit(target) == unit(me)
            if level(target) > level(me) or (level(target) == level(me) and not same_unit):
                upward.append(f"{me} -> {target}")
    assert not upward, "imports that go up or sideways in the layer map:\n" + "\n".join(upward)


def test_no_module_is_too_long():
    long = {module_name(p): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_module_import_cycle():
    names = {module_name(p): p for p in modules()}

    def resolve(target: str) -> str | None:
        while target and target not in names:
            target = target.rpartition(".")[0]
        return target or None

    edges = {}
    for me, path in names.items():
        targets = {resolve(t) for t in imports(path)} - {None, me}
        edges[me] = {t for t in targets if not (me.startswith(t + ".") and names[t].name == "__init__.py")}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, stack: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t, stack + [t])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(names):
        if m not in state:
            cycle = visit(m, [m])
            assert cycle is None, " -> ".join(cycle)
