"""Is the model there, and the data and task metric? Checked once, before a study is created.

A factory whose module cannot be found or that does not define the function, an ONNX file that
is missing or is not ONNX, a Hugging Face folder without its config: each would otherwise fail
every trial with `error`. The checks read files; they never build the model (a factory module's
parent packages are imported to find it, the module itself is only parsed).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from autotuner.models.builtins import _on_path
from autotuner.models.dataset import check_data
from autotuner.spec.schema import FieldError, Spec


def check_source(spec: Spec) -> None:
    """Raise FieldError (path from the spec's root) when the model's source cannot be loaded."""
    m = spec.model
    if m.factory is not None:
        _factory(spec, m.factory, ("model", "factory"))
    elif m.onnx is not None:
        _onnx(spec, spec.resolve(m.onnx))
    elif m.hf is not None:
        folder = spec.resolve(m.hf)
        if not (folder / "config.json").is_file():
            what = "has no config.json" if folder.is_dir() else "is not a folder"
            raise FieldError(("model", "hf"), f"{folder} {what}; give a local Hugging Face model folder")
    if spec.accuracy.metric is not None:
        _factory(spec, spec.accuracy.metric, ("accuracy", "metric"))
    if spec.data is not None:
        check_data(spec)  # reads and splits it once; the trials read the cached sets


def _factory(spec: Spec, target: str, where: tuple[str, ...]) -> None:
    mod_name, _, fn_name = target.partition(":")
    with _on_path(spec.base_dir):
        try:
            found = importlib.util.find_spec(mod_name)
        except (ImportError, ValueError) as e:  # a parent package that does not import
            raise FieldError(where, f"cannot import {mod_name!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - a parent package's own code raised
            raise FieldError(
                where, f"importing the packages above {mod_name!r} raised {type(e).__name__}: {e}"
            ) from None
    if found is None:
        raise FieldError(
            where,
            f"no module {mod_name!r} (looked in the spec's folder {spec.base_dir}, "
            "the current folder and sys.path)",
        )
    origin = Path(found.origin) if found.origin and found.origin.endswith(".py") else None
    if origin is None:
        return  # compiled or namespace module: importing it in the worker is the only check
    try:
        tree = ast.parse(origin.read_bytes(), filename=str(origin))
    except SyntaxError as e:
        raise FieldError(where, f"{origin} line {e.lineno}: {e.msg}") from None
    except OSError as e:
        raise FieldError(where, f"cannot read {origin}: {e}") from None
    names = _top_level_names(tree)
    if names is not None and fn_name not in names:
        raise FieldError(where, f"{origin} defines no {fn_name!r}")


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """The names a module binds at its top level (in either branch of an `if` or `try` too);
    None when that cannot be told without running it (`from x import *`, a module-level
    __getattr__, assignments through globals())."""
    names: set[str] = set()
    body = list(tree.body)
    while body:
        node = body.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.For | ast.With):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [i.optional_vars for i in node.items if i.optional_vars]
                if isinstance(node, ast.With)
                else [node.target]
            )
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        for field in ("body", "orelse", "finalbody", "handlers"):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                body.extend(getattr(node, field, []) or [])
    uses_globals = any(isinstance(n, ast.Name) and n.id == "globals" for n in ast.walk(tree))
    if "__getattr__" in names or uses_globals:
        return None
    return names


def _onnx(spec: Spec, path: Path) -> None:
    where = ("model", "onnx")
    if not path.exists():
        raise FieldError(where, f"no such file: {path}")
    if not path.is_file():
        raise FieldError(where, f"{path} is not a file")
    import onnx  # noqa: PLC0415 (heavy: onnx)

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError and others
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FieldError(where, f"{path} is not an ONNX model ({first})") from None
    if not model.graph.node:
        raise FieldError(where, f"{path} is not an ONNX model (its graph has no nodes)")
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i.name for i in model.graph.input if i.name not in initializers]
    for i, spec_input in enumerate(spec.inputs or []):
        if spec_input.name not in graph_inputs:
            raise FieldError(
                ("inputs", i, "name"),
                f"{spec_input.name!r} is not an input of {path.name}; its inputs: {', '.join(graph_inputs)}",
            )
