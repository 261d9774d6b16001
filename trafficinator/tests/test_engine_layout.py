"""The engine (traffic model and sending layer) is plain Python below every app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENGINE = [ROOT / "trafficinator" / "traffic", ROOT / "trafficinator" / "sending"]
APPS = ["targets", "presets", "funnels", "backfill", "runs"]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _engine_sources() -> list[Path]:
    return [path for package in ENGINE for path in package.rglob("*.py") if "tests" not in path.parts]


def test_engine_modules_import_neither_django_nor_an_app():
    offenders = []
    for path in _engine_sources():
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top == "django" or top in APPS:
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_engine_imports_without_django_settings():
    """Importing the engine's public API in a fresh interpreter loads no Django module."""
    code = (
        "import sys, trafficinator.traffic, trafficinator.sending.sender, trafficinator.sending.telemetry;"
        "sys.exit(1 if any(name == 'django' or name.startswith('django.') for name in sys.modules) else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_apps_use_only_the_public_api_of_other_apps():
    """No app imports another app's private names (a leading underscore)."""
    offenders = []
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    top = node.module.split(".")[0]
                    if top in APPS and top != app:
                        private = [alias.name for alias in node.names if alias.name.startswith("_")]
                        if private:
                            offenders.append(f"{path.relative_to(ROOT)}: {node.module} {private}")
    assert offenders == []


# What an app may import from the engine: the traffic model's package API and the three
# public modules of the sending layer.
ENGINE_PUBLIC_MODULES = {
    "trafficinator.traffic",
    "trafficinator.sending.sender",
    "trafficinator.sending.telemetry",
    "trafficinator.sending.clients",
}


def _engine_import_problems(source: str, label: str, traffic_api: set[str]) -> list[str]:
    problems = []
    tree = ast.parse(source, filename=label)
    for node in ast.walk(tree):
        imported: list[tuple[str, list[str]]]  # (module, names imported from it)
        if isinstance(node, ast.Import):
            imported = [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported = [(node.module, [alias.name for alias in node.names])]
        else:
            continue
        for module, names in imported:
            if not module.startswith(("trafficinator.traffic", "trafficinator.sending")):
                continue
            where = f"{label}:{node.lineno}"
            if module not in ENGINE_PUBLIC_MODULES:
                problems.append(f"{where} imports {module}")
            elif module == "trafficinator.traffic":
                problems += [f"{where} imports {name} (not in __all__)" for name in names if name not in traffic_api]
            else:
                problems += [f"{where} imports {module}.{name}" for name in names if name.startswith("_")]
    return problems


def test_apps_import_only_the_engines_public_api():
    """Apps (their tests too) reach the engine through ``trafficinator.traffic``'s
    ``__all__`` and the public names of ``trafficinator.sending.{sender,telemetry,clients}``,
    so the engine can be rearranged inside without touching them."""
    import trafficinator.traffic

    traffic_api = set(trafficinator.traffic.__all__)
    problems = []
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            problems += _engine_import_problems(path.read_text(), str(path.relative_to(ROOT)), traffic_api)
    assert problems == []


def test_the_public_api_check_catches_a_submodule_a_private_name_and_an_unexported_name():
    source = (
        "from trafficinator.traffic.curves import expected_visits\n"
        "import trafficinator.sending.sender\n"
        "from trafficinator.sending.sender import _bulk_counts\n"
        "from trafficinator.traffic import Profile, curves\n"
    )
    problems = _engine_import_problems(source, "module.py", {"Profile"})
    assert [problem.split(" ", 1)[1] for problem in problems] == [
        "imports trafficinator.traffic.curves",
        "imports trafficinator.sending.sender._bulk_counts",
        "imports curves (not in __all__)",
    ]


def _app_dependencies() -> dict[str, set[str]]:
    """The apps each app's own code imports (module level or inside a function); its
    tests and migrations are left out."""
    graph: dict[str, set[str]] = {app: set() for app in APPS}
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "tests" in path.parts or "migrations" in path.parts:
                continue
            for module in _imported_modules(path):
                top = module.split(".")[0]
                if top in APPS and top != app:
                    graph[app].add(top)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One dependency cycle as a path (["a", "b", "a"]), or [] when there is none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for dependency in sorted(graph.get(node, ())):
            found = visit(dependency, [*path, node])
            if found:
                return found
        done.add(node)
        return []

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return []


def test_the_apps_depend_on_each_other_without_a_cycle():
    assert _cycle(_app_dependencies()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"presets": {"targets"}, "targets": set()}) == []
    assert _cycle({"runs": {"presets"}, "presets": {"funnels"}, "funnels": {"presets"}}) == [
        "funnels",
        "presets",
        "funnels",
    ]


def test_no_app_code_outside_targets_uses_the_fake_matomo():
    """The fake Matomo is a test and benchmark tool: no app's own code depends on it."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for app in APPS
        if app != "targets"
        for path in (ROOT / app).rglob("*.py")
        if "tests" not in path.parts
        for module in _imported_modules(path)
        if module.startswith("targets.fake_matomo")
    ]
    assert offenders == []
