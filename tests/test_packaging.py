"""The production package stands alone: ``pip install bedrock-proxy`` (no extras) runs the proxy.

Two checks. Statically, no module of ``proxy`` imports the dev tooling (``proxy_dev``) or
a dev-only dependency, anywhere in the file, function bodies included; the one exception
is ``proxy/cli.py``'s dev verbs, which import ``proxy_dev`` lazily and say which extra to
install when its dependencies are missing. Then for real: the project is installed
without extras into a fresh virtualenv and used there.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pkgutil
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import proxy

ROOT = Path(__file__).resolve().parent.parent
HINT = "needs the dev extra: pip install 'bedrock-proxy[dev]'"

# The dev extra's distributions by import name: none may be needed to run the proxy.
DEV_ONLY = frozenset({"boto3", "moto", "mypy", "pytest", "pytest_aiohttp", "ruff", "yaml"})

# The only production code allowed to import proxy_dev: the dev verbs of the command line,
# each a function of proxy/cli.py importing inside its body.
DEV_VERBS = {
    ("proxy.cli", "_emulator"),
    ("proxy.cli", "_ca_init"),
    ("proxy.cli", "_ca_issue"),
    ("proxy.cli", "_dev_up"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the production module importing
    function: str  # qualified name of the enclosing function; "" at module level
    target: str  # the module imported, absolute
    line: int

    def __str__(self) -> str:
        where = f"{self.module}:{self.line}" + (f" in {self.function}()" if self.function else "")
        return f"{where} imports {self.target}"


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, module: str, package: str) -> None:
        self.module = module
        self.package = package
        self.scope: list[str] = []
        self.found: list[Import] = []

    def _add(self, target: str, node: ast.AST) -> None:
        function = ".".join(self.scope)
        self.found.append(Import(self.module, function, target, getattr(node, "lineno", 0)))

    def _visit_scope(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _visit_scope

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        relative = "." * node.level + (node.module or "")
        base = importlib.util.resolve_name(relative, self.package) if node.level else relative
        self._add(base, node)
        # ``from package import name`` may import a submodule: count it as one.
        for alias in node.names:
            self._add(f"{base}.{alias.name}", node)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("x") and __import__("x") with a literal name are imports too.
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in {"import_module", "__import__"} and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self._add(first.value, node)
        self.generic_visit(node)


def production_modules() -> dict[str, Path]:
    """Every module of ``proxy`` by name, with its source file."""
    names = ["proxy"] + [
        info.name for info in pkgutil.walk_packages(proxy.__path__, "proxy.", onerror=_raise)
    ]
    modules = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        modules[name] = Path(spec.origin)
    return modules


def production_imports() -> Iterator[Import]:
    """Every import written in every module of ``proxy``, found by parsing, not importing."""
    for name, path in production_modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        collector = _ImportCollector(name, package)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        yield from collector.found


def _raise(name: str) -> None:
    raise AssertionError(f"cannot walk {name}")


def _top(target: str) -> str:
    return target.partition(".")[0]


def test_the_walk_sees_the_whole_package() -> None:
    seen = set(production_modules())
    files = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (ROOT / "proxy").rglob("*.py")
    }
    assert seen == files


def test_production_code_never_imports_the_dev_tooling() -> None:
    dev_imports = [found for found in production_imports() if _top(found.target) == "proxy_dev"]
    outside = [
        str(found) for found in dev_imports if (found.module, found.function) not in DEV_VERBS
    ]
    assert outside == [], "production code imports the dev tooling"
    # The exception stays exactly as wide as the dev verbs: none is stale.
    assert {(found.module, found.function) for found in dev_imports} == DEV_VERBS


def test_production_code_never_imports_a_dev_only_dependency() -> None:
    offending = [str(found) for found in production_imports() if _top(found.target) in DEV_ONLY]
    assert offending == []


def _cli_without(blocked: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child interpreter where ``import <blocked>`` fails as if not installed."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from proxy.cli import main\n"
        f"raise SystemExit(main({list(argv)!r}))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("blocked", "argv", "verb"),
    [
        ("moto", ["emulator", "--help"], "emulator"),
        ("werkzeug", ["emulator"], "emulator"),
        ("moto", ["dev", "up", "--dir", "unused"], "dev up"),
    ],
)
def test_a_dev_verb_without_the_dev_extra_says_what_to_install(
    blocked: str, argv: list[str], verb: str
) -> None:
    result = _cli_without(blocked, *argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: 'bedrock-proxy {verb}' {HINT}"
    assert "Traceback" not in result.stderr


def test_a_missing_module_of_the_project_itself_is_a_bug_not_a_missing_extra() -> None:
    result = _cli_without("proxy_dev.emulator.sts", "emulator")
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert HINT not in result.stderr


@dataclass(frozen=True)
class Installed:
    bin: Path
    cwd: Path
    env: dict[str, str]

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        executable = str(self.bin / command[0])
        return subprocess.run(
            [executable, *command[1:]],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


def _source_tree(destination: Path) -> Path:
    """A copy of what the Dockerfile builds from (pyproject.toml, README.md and the packages).

    pip builds a local project in place, leaving ``build/`` and ``*.egg-info`` beside the
    sources, so it builds this copy rather than the working tree.
    """
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    for name in ("proxy", "proxy_dev"):
        shutil.copytree(
            ROOT / name, destination / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    source = _source_tree(base / "src")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Nothing of this interpreter's environment may leak in, and the working directory
    # holds no package, so every import below resolves in the new virtualenv.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env["VIRTUAL_ENV"] = str(venv)
    cwd = base / "cwd"
    cwd.mkdir()
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", str(source)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if pip.returncode != 0:
        pytest.fail(f"pip install failed ({pip.returncode}):\n{pip.stdout}\n{pip.stderr}")
    return Installed(venv / "bin", cwd, env)


def test_installed_without_extras_the_proxy_imports_from_the_virtualenv(
    installed: Installed,
) -> None:
    result = installed.run("python", "-c", "import proxy.app, proxy; print(proxy.__file__)")
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout
    assert Path(result.stdout.strip()).is_relative_to(installed.bin.parent)


def test_installed_without_extras_serve_runs(installed: Installed) -> None:
    result = installed.run("bedrock-proxy", "serve", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


@pytest.mark.parametrize("module", ["moto", "boto3", "pytest", "yaml"])
def test_installed_without_extras_has_no_dev_dependency(installed: Installed, module: str) -> None:
    result = installed.run("python", "-c", f"import {module}")
    assert result.returncode == 1
    assert f"ModuleNotFoundError: No module named '{module}'" in result.stderr


@pytest.mark.parametrize(
    ("argv", "verb"), [(["emulator"], "emulator"), (["dev", "up", "--dir", "stack"], "dev up")]
)
def test_installed_without_extras_dev_verbs_say_what_to_install(
    installed: Installed, argv: list[str], verb: str
) -> None:
    result = installed.run("bedrock-proxy", *argv)
    assert result.returncode == 2
    assert result.stderr == f"error: 'bedrock-proxy {verb}' {HINT}\n"


def test_installed_without_extras_dev_ca_works(installed: Installed) -> None:
    # The dev CA needs only cryptography, a runtime dependency.
    result = installed.run(
        "bedrock-proxy", "dev-ca", "init", "--dir", "ca", "--trust-domain", "example.org"
    )
    assert result.returncode == 0, result.stderr
    assert (installed.cwd / "ca" / "ca.pem").is_file()
