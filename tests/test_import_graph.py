"""The import graph of the project: two planes, no circle, no arrow back into the generator.

Built from the source (``ast``), every ``import`` counted wherever it is (also inside
functions), except those under ``if TYPE_CHECKING:``. An import of a package's submodule
(``from pkg import sub``) is an arrow to the submodule only.

The arrows allowed between the parts of ``lb_agent``:

* ``lb_agent.dataplane`` (the request path) never imports ``lb_agent.control``;
* ``lb_agent.control`` imports from the data plane only ``lb_agent.dataplane.policies`` (the
  scaler rebuilds the routing policy when an update changes it);
* neither plane imports the wiring (``server``, ``admin``, ``status``, ``cli``,
  ``supervisor``): the wiring imports the planes;
* nothing in ``lb_agent`` imports ``components`` (the generator and CLI);
* ``lb_agent`` has no import circle;
* the generator (``components`` except the CLI commands in ``components.commands``, which
  run the agent itself for ``skyform local`` and ``skyform agent``) imports the agent only
  through ``lb_agent.contract``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIRING = ("lb_agent.server", "lb_agent.admin", "lb_agent.status", "lb_agent.cli",
          "lb_agent.supervisor", "lb_agent.__main__")


def _modules(package: str) -> dict[str, Path]:
    """Module name -> source file; C extensions (``*.c`` beside the Python) are leaves."""
    out: dict[str, Path] = {}
    for path in (ROOT / package).rglob("*"):
        if path.suffix not in (".py", ".c") or ".venv" in path.parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
            yield from subs
            if len(subs) < len(node.names):
                yield module


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (lb_agent and components)."""
    known = {**_modules("lb_agent"), **_modules("components")}
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        deps: set[str] = set()
        if path.suffix == ".py":
            for target in _imported(name, path, known):
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def _arrows(graph: dict[str, set[str]], src: str, dst: str) -> list[str]:
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    return sorted(f"{m} -> {d}" for m, deps in graph.items() if under(m, src)
                  for d in deps if under(d, dst))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


GRAPH = import_graph()
AGENT = {m: {d for d in deps if d.startswith("lb_agent")}
         for m, deps in GRAPH.items() if m.startswith("lb_agent")}


def test_the_graph_sees_the_planes() -> None:
    """The builder finds the modules and arrows the other tests reason about."""
    assert "lb_agent.dataplane.proxy" in GRAPH and "lb_agent.control.scaler" in GRAPH
    assert "lb_agent.dataplane.dispatch" in GRAPH["lb_agent.dataplane.proxy"]
    assert "lb_agent.control.scaler" in GRAPH["lb_agent.server"]  # a function-level import
    assert "lb_agent.dataplane.policies._prefix_native" in GRAPH


def test_lb_agent_has_no_import_circle() -> None:
    assert _cycles(AGENT) == []


def test_the_agent_never_imports_the_generator() -> None:
    assert _arrows(GRAPH, "lb_agent", "components") == []


def test_the_data_plane_never_imports_the_control_plane() -> None:
    assert _arrows(GRAPH, "lb_agent.dataplane", "lb_agent.control") == []


def test_the_control_plane_uses_only_the_routing_policies_of_the_data_plane() -> None:
    arrows = _arrows(GRAPH, "lb_agent.control", "lb_agent.dataplane")
    assert [a for a in arrows if not a.endswith("-> lb_agent.dataplane.policies")] == []


def test_the_planes_never_import_the_wiring() -> None:
    for plane in ("lb_agent.dataplane", "lb_agent.control"):
        for wiring in WIRING:
            assert _arrows(GRAPH, plane, wiring) == []


def test_the_generator_imports_the_agent_only_through_the_contract() -> None:
    arrows = [a for a in _arrows(GRAPH, "components", "lb_agent")
              if not a.startswith("components.commands")]
    assert arrows, "the generator builds the agent's config: it must use the contract"
    assert [a for a in arrows if not a.endswith("-> lb_agent.contract")] == []


def test_the_agent_never_imports_its_test_doubles() -> None:
    """lb_agent.testing (the LLM replica simulator) is for tests and benches only."""
    arrows = [a for a in _arrows(GRAPH, "lb_agent", "lb_agent.testing")
              if not a.startswith("lb_agent.testing")]
    assert arrows == []
    assert "lb_agent.testing.llm_sim" in GRAPH
