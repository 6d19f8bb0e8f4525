"""The module map of the README holds: imports run one way, with no circle and no import made
inside a function (other than of an optional dependency), and no front end reads Settings."""

import ast
import os

import pytest

from servers import ROOT

# Each first-party module or package -> what it may import (prefixes), as the README's table.
MAY_IMPORT = {
    "proxy": (),
    "proxy.errors": (),
    "proxy.log_limit": (),
    "proxy.budgets": (),
    "proxy.cache": ("proxy.errors", "proxy.cache"),
    "proxy.store": ("proxy.errors", "proxy.log_limit", "proxy.cache", "proxy.store"),
    "proxy.upstream": ("proxy.errors", "proxy.log_limit", "proxy.budgets", "proxy.cache", "proxy.upstream",
                       "proxy"),  # proxy: __version__ alone
    "proxy.core": ("proxy.errors", "proxy.log_limit", "proxy.budgets", "proxy.cache", "proxy.store", "proxy.upstream",
                   "proxy.core"),
    "proxy.settings_parsers": (),
    "proxy.settings_checks": (),
    "load_env": ("proxy.errors", "proxy.settings_parsers", "proxy.settings_checks"),
    "logger": (),
    "proxy.parts": ("proxy.errors", "proxy.cache", "proxy.store", "proxy.upstream", "load_env"),
    "redis_proxy": ("proxy.errors", "proxy.log_limit", "proxy.cache", "proxy.store", "proxy.upstream", "proxy.core",
                    "proxy.parts", "load_env"),
    "proxy.serving": ("proxy.errors", "proxy.budgets", "proxy.cache", "proxy.serving"),  # cache: its pure parts
    "proxy.resp": ("proxy.errors", "proxy.budgets", "proxy.serving", "proxy.resp", "redis_proxy", "proxy"),
    "proxy.process": ("proxy.errors", "proxy.store", "proxy.process", "load_env", "proxy"),  # proxy: __version__ alone
}
FRONT_ENDS = ("proxy.serving", "proxy.resp")
OPTIONAL = {"hiredis"}  # may be imported inside a function, falling back when absent


def _modules() -> dict[str, str]:
    """Dotted name -> path of every product module (the package and the top-level files)."""
    found = {}
    for name in ("redis_proxy", "http_server", "load_env", "logger"):
        found[name] = os.path.join(ROOT, f"{name}.py")
    for folder, _dirs, files in os.walk(os.path.join(ROOT, "proxy")):
        for file in files:
            if file.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, file), ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(folder, file)
    return found


MODULES = _modules()


def _imports(path: str) -> list[tuple[str, int, bool]]:
    """(imported first-party module, line, inside a function?) for each import in `path`."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    nested = {id(node) for func in ast.walk(tree) if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(func) if node is not func}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            out.append((name, node.lineno, id(node) in nested))
    return out


def _first_party(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _within(dep: str, allowed: str) -> bool:
    """`dep` is `allowed` or inside it; the package root `proxy` itself only matches exactly."""
    return dep == allowed or (allowed != "proxy" and dep.startswith(allowed + "."))


def _layer(module: str) -> str:
    return max((key for key in MAY_IMPORT if module == key or module.startswith(key + ".")), key=len)


def test_no_import_inside_a_function_but_optional_ones():
    inside = [f"{module}:{line} imports {name}" for module, path in MODULES.items()
              for name, line, nested in _imports(path) if nested and name.split(".")[0] not in OPTIONAL]
    assert inside == []


def test_the_import_graph_has_no_circle():
    graph = {module: {dep for name, _line, _nested in _imports(path)
                      if (dep := _first_party(name)) and dep != module}
             for module, path in MODULES.items()}
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        assert module not in stack, " -> ".join(stack[stack.index(module):] + [module])
        if module in done:
            return
        for dep in graph[module]:
            visit(dep, stack + [module])
        done.add(module)

    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("module", [m for m in MODULES if m != "http_server"])
def test_imports_run_down_the_module_map(module):
    allowed = MAY_IMPORT[_layer(module)]
    wrong = sorted({dep for name, _line, _nested in _imports(MODULES[module])
                    if (dep := _first_party(name)) and dep != module
                    and not any(_within(dep, a) for a in allowed)})
    assert wrong == [], f"{module} may import only {allowed}"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith(FRONT_ENDS)])
def test_no_front_end_imports_settings(module):
    assert not [name for name, _line, _nested in _imports(MODULES[module]) if name.startswith("load_env")]


def test_nothing_imports_a_front_end():
    front = {"http_server"} | {m for m in MODULES if m.startswith("proxy.resp.server")}
    importers = {module: dep for module, path in MODULES.items() for name, _l, _n in _imports(path)
                 if (dep := _first_party(name)) in front and module not in ("http_server",)}
    assert importers == {}
