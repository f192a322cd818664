"""House rules checked on the source: no function in autotuner/ is over 80 lines, except the
literal tables named below (a table is long because it lists, not because it does much)."""

from __future__ import annotations

import ast
from pathlib import Path

MAX_LINES = 80
PACKAGE = Path(__file__).resolve().parents[2] / "autotuner"
# "path/inside/autotuner.py:Qualified.name" -> why it may be longer: literal tables only.
LITERAL_TABLES: dict[str, str] = {}


def long_functions(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(path:qualified name, lines from `def` to its last line) of every function over `limit`."""
    found: list[tuple[str, int]] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, lines in _functions(tree, ""):
            if lines > limit:
                found.append((f"{path.relative_to(root).as_posix()}:{name}", lines))
    return found


def _functions(node: ast.AST, prefix: str) -> list[tuple[str, int]]:
    """Every function under node (methods and nested ones too), by qualified name, with its lines."""
    out: list[tuple[str, int]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                out.append((name, (child.end_lineno or child.lineno) - child.lineno + 1))
            out += _functions(child, f"{name}.")
        else:
            out += _functions(child, prefix)
    return out


def test_no_function_is_over_80_lines_outside_a_literal_table() -> None:
    over = [(name, n) for name, n in long_functions() if name not in LITERAL_TABLES]
    assert not over, "functions over 80 lines: " + ", ".join(f"{name} ({n})" for name, n in over)


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text("class C:\n    def f(self):\n" + body + "\n\ndef g():\n    pass\n")
    assert long_functions(tmp_path) == [("m.py:C.f", MAX_LINES + 1)]


def test_every_listed_function_is_still_long() -> None:
    names = {name for name, _ in long_functions()}
    listed = set(LITERAL_TABLES)
    assert listed <= names, f"listed but no longer over {MAX_LINES} lines (remove them): {listed - names}"


def test_the_public_surface_resolves_and_stays_lazy() -> None:
    import subprocess
    import sys

    import autotuner
    from autotuner import api

    assert {"run", "bench", "export", "report", "verify", "quantize", "load_spec"} <= set(autotuner.__all__)
    for name in autotuner.__all__:
        assert getattr(autotuner, name) is not None, name
    assert all(hasattr(api, name) for name in api.__all__)
    code = "import sys, autotuner; print(sorted(m for m in sys.modules if m.startswith('autotuner.')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "autotuner.api" not in loaded and "optuna" not in loaded, loaded


def test_the_cli_reaches_the_stages_only_through_the_api() -> None:
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    inside = {m for m in imported if m and m.startswith("autotuner")}
    light = {
        "autotuner",
        "autotuner._version",
        "autotuner.errors",
        "autotuner.progress",
        "autotuner.report.formats",
    }
    assert inside <= light, f"cli imports {sorted(inside - light)}: call them through autotuner.api"
