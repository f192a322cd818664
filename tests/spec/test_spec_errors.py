"""A corpus of malformed specs, each pinned to the exact one-line error it gets.

Every case starts from a valid spec (a copy of search_spaces/quickstart.yaml), breaks one thing,
writes it to tmp_path/spec.yaml and checks that load_spec raises SpecError whose text is
`spec.yaml: FIELD.PATH: PROBLEM` (or `spec.yaml: PROBLEM` where the whole file is at fault).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotuner.api import load_spec, run
from autotuner.errors import SpecError, UsageError
from autotuner.metrics import METRICS
from autotuner.models.builtins import BUILTINS
from autotuner.progress import Progress
from autotuner.runners.registry import all_backends, all_knobs
from autotuner.spec.schema import Spec

ROOT = Path(__file__).resolve().parents[2]
FILE = "spec.yaml"

# A copy of search_spaces/quickstart.yaml, so that edits to the shipped example do not move these cases.
BASE: dict[str, Any] = {
    "name": "quickstart",
    "model": {
        "builtin": "tiny-transformer",
        "options": {"layers": 4, "hidden": 256, "heads": 4, "seq_len": 64},
    },
    "space": {
        "backend": ["torch-eager", "onnxruntime-cpu"],
        "precision": ["fp32", "bf16", "int8-dynamic"],
        "batch_size": {"low": 1, "high": 32, "log": True},
        "threads": [1, 2],
    },
    "objectives": [
        {"metric": "throughput_items_s", "direction": "maximize"},
        {"metric": "latency_p95_ms", "direction": "minimize"},
    ],
    "constraints": ["accuracy_cosine >= 0.99"],
    "budget": {"trials": 24},
    "seed": 0,
    "measurement": {"warmup_iters": 2, "min_iters": 10, "min_time_s": 0.4, "max_time_s": 1.5},
    "pick": {"top_k": 3, "rounds": 4, "round_time_s": 0.4, "tie_break": "min:peak_memory_mb"},
}

# The "allowed: ..." tails come from the package's own tables, so a new metric or knob does not
# break every case; test_allowed_lists_name_the_intended_values checks they hold the fix.
METRIC_LIST = ", ".join(METRICS)
KNOB_LIST = ", ".join(sorted(all_knobs()))
BACKEND_LIST = ", ".join(sorted(all_backends()))
BUILTIN_LIST = ", ".join(sorted(BUILTINS))
# The core fields, then the sections the installed runners declare (command, workload).
TOP_FIELDS = (
    "name, model, inputs, space, metrics, cost, objectives, constraints, budget, sampler, seed, "
    "measurement, scenario, serving, data, accuracy, pick, baseline, storage, study, command, vllm, workload"
)

NOT_A_MAPPING = "must be a mapping of fields (name, model, space, ...), got"
AT_LEAST_1 = "Input should be greater than or equal to 1"
NOT_A_MAPPING_LIST = "must be a mapping, got a list"
NOT_A_DIMENSION = "is not a dimension; use a positive integer or 'batch' (the only word allowed)"
NOT_A_SCALAR = "must be a single value (number, string or boolean)"
SPACE_PARAMS = "backend, precision, batch_size, threads"
PRECISIONS = "bf16, fp16, fp32, int8, int8-dynamic"  # what the torch and onnxruntime runners offer together
GRID_NEEDS_FINITE = (
    "grid needs finite parameters, but space.batch_size is a continuous or log range; give choices or a step"
)

FACTORY = {"factory": "mypkg.models:build"}
DELETE = object()
MISSING = object()  # no file at all
DIRECTORY = object()  # a directory where the file should be


def mod(changes: dict[str, Any]) -> dict[str, Any]:
    """BASE with each dotted path ('measurement.min_iters', 'objectives.0.metric') set or deleted."""
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            if value is DELETE:
                del node[int(last)]
            else:
                node[int(last)] = value
        elif value is DELETE:
            del node[last]
        else:
            node[last] = value
    return data


def factory_with(*inputs: dict[str, Any]) -> dict[str, Any]:
    return mod({"model": FACTORY, "inputs": list(inputs)})


def case(id: str, content: Any, path: str, problem: str) -> Any:
    return pytest.param(content, path, problem, id=id)


CASES = [
    # --- the file itself ---------------------------------------------------------------------------
    case("missing-file", MISSING, "", "no such file"),
    case("directory", DIRECTORY, "", "is a directory, not a spec file"),
    case(
        "not-utf8",
        b"name: \xff\xfe\n",
        "",
        "cannot be read: 'utf-8' codec can't decode byte 0xff in position 6: invalid start byte",
    ),
    case(
        "yaml-unclosed-flow-mapping",
        "name: q\nmodel: {builtin: tiny-transformer\nspace: {}\n",
        "",
        "line 3, column 6: not valid YAML (expected ',' or '}', but got ':')",
    ),
    case(
        "yaml-tab-indent",
        "name: q\n\tmodel: x\n",
        "",
        "line 2, column 1: not valid YAML (found character '\\t' that cannot start any token)",
    ),
    case(
        "yaml-bad-dedent",
        "name: q\nspace:\n  threads: [1]\n precision: [fp32]\n",
        "",
        "line 4, column 2: not valid YAML (expected <block end>, but found '<block mapping start>')",
    ),
    case(
        "yaml-duplicate-top-level-key",
        "name: q\nmodel: {builtin: tiny-transformer}\nname: r\n",
        "",
        "line 3: key 'name' is given twice (first on line 1)",
    ),
    case(
        "yaml-duplicate-nested-key",
        "name: q\nspace:\n  threads: [1]\n  precision: [fp32]\n  threads: [2]\n",
        "",
        "line 5: key 'threads' is given twice (first on line 3)",
    ),
    case(
        "yaml-duplicate-flow-key",
        "name: q\nbudget: {trials: 4, trials: 8}\n",
        "",
        "line 2: key 'trials' is given twice (first on line 2)",
    ),
    case(
        "top-level-list",
        "- name: q\n- model: {builtin: tiny-transformer}\n",
        "",
        f"{NOT_A_MAPPING} a list",
    ),
    case("top-level-scalar", "quickstart\n", "", f"{NOT_A_MAPPING} a string"),
    case("empty-file", "", "", f"{NOT_A_MAPPING} empty"),
    case("comments-only", "# nothing here\n", "", f"{NOT_A_MAPPING} empty"),
    # --- top level -------------------------------------------------------------------------------
    case("missing-name", mod({"name": DELETE}), "name", "required field is missing"),
    case("missing-space", mod({"space": DELETE}), "space", "required field is missing"),
    case(
        "bad-name-chars",
        mod({"name": "my model!"}),
        "name",
        "'my model!' is not a usable name; use letters, digits, '_', '-', '.' (up to 100)",
    ),
    case(
        "bad-study-chars",
        mod({"study": "runs/a"}),
        "study",
        "'runs/a' is not a usable name; use letters, digits, '_', '-', '.' (up to 100)",
    ),
    case("unknown-top-level-field", mod({"trails": 5}), "trails", f"unknown field; allowed: {TOP_FIELDS}"),
    case("seed-negative", mod({"seed": -1}), "seed", "Input should be greater than or equal to 0"),
    # A runner's section is checked wherever it is given, even when no backend of the space reads it.
    case("workload-without-llm", mod({"workload": {"requests": 0}}), "workload.requests", AT_LEAST_1),
    case(
        "workload-unknown-field",
        mod({"workload": {"request": 4}}),
        "workload.request",
        "unknown field; allowed: requests, prompt_len, output_len, rate_rps, trace, slo_ttft_ms, slo_tpot_ms",
    ),
    # --- model -----------------------------------------------------------------------------------
    case(
        "model-two-sources",
        mod({"model.onnx": "model.onnx"}),
        "model",
        "give exactly one of builtin, factory, onnx, external, hf (got builtin, onnx)",
    ),
    case(
        "model-no-source",
        mod({"model": {"options": {}}}),
        "model",
        "give exactly one of builtin, factory, onnx, external, hf (got none)",
    ),
    case(
        "model-unknown-builtin",
        mod({"model.builtin": "tiny-transfomer"}),
        "model.builtin",
        f"unknown builtin 'tiny-transfomer'; allowed: {BUILTIN_LIST}",
    ),
    case(
        "model-bad-factory-format",
        mod({"model": {"factory": "mypkg/models.py"}, "inputs": [{"name": "x", "shape": ["batch", 16]}]}),
        "model.factory",
        "'mypkg/models.py' must look like 'package.module:function'",
    ),
    case(
        "model-onnx-not-dot-onnx",
        mod({"model": {"onnx": "model.pt"}, "inputs": [{"name": "x", "shape": ["batch", 16]}]}),
        "model.onnx",
        "'model.pt' must be a path to a .onnx file",
    ),
    case(
        "model-unknown-field",
        mod({"model.path": "model.onnx"}),
        "model.path",
        "unknown field; allowed: builtin, factory, onnx, external, hf, options, seed",
    ),
    case(
        "model-as-string",
        mod({"model": "tiny-transformer"}),
        "model",
        "must be a mapping, got a string",
    ),
    case("model-null", mod({"model": None}), "model", "must be a mapping, got nothing"),
    # --- inputs ----------------------------------------------------------------------------------
    case(
        "factory-without-inputs",
        mod({"model": FACTORY}),
        "inputs",
        "required when the model is a factory or an ONNX file",
    ),
    case(
        "input-shape-without-batch",
        factory_with({"name": "x", "shape": [8, 16]}),
        "inputs[0].shape",
        "must hold the word 'batch' exactly once, e.g. [batch, 128]",
    ),
    case(
        "input-shape-batch-twice",
        factory_with({"name": "x", "shape": ["batch", "batch"]}),
        "inputs[0].shape",
        "must hold the word 'batch' exactly once, e.g. [batch, 128]",
    ),
    case(
        "input-shape-zero-dim",
        factory_with({"name": "x", "shape": ["batch", 0]}),
        "inputs[0].shape[1]",
        f"0 {NOT_A_DIMENSION}",
    ),
    case(
        "input-shape-other-word",
        factory_with({"name": "x", "shape": ["batch", "seq"]}),
        "inputs[0].shape[1]",
        f"'seq' {NOT_A_DIMENSION}",
    ),
    case(
        "input-shape-number-as-string",
        factory_with({"name": "x", "shape": ["batch", "16"]}),
        "inputs[0].shape[1]",
        f"'16' {NOT_A_DIMENSION}",
    ),
    case(
        "input-low-as-string",
        factory_with({"name": "x", "shape": ["batch", 16], "low": "0"}),
        "inputs[0].low",
        "must be a number, got a string",
    ),
    case(
        "input-bad-dtype",
        factory_with({"name": "x", "shape": ["batch", 16], "dtype": "float64"}),
        "inputs[0].dtype",
        "Input should be 'float32', 'float16', 'int64', 'int32' or 'bool'",
    ),
    case(
        "input-low-not-below-high",
        factory_with({"name": "x", "shape": ["batch", 16], "low": 1.0, "high": 1.0}),
        "inputs[0].low",
        "1 must be below high (1)",
    ),
    case(
        "input-bad-name",
        factory_with({"name": "input-ids", "shape": ["batch"]}),
        "inputs[0].name",
        "'input-ids' must start with a letter or '_' and hold only letters, digits and '_'",
    ),
    case(
        "input-name-twice",
        factory_with({"name": "x", "shape": ["batch"]}, {"name": "x", "shape": ["batch"]}),
        "inputs[1].name",
        "'x' is listed twice",
    ),
    case(
        "input-unknown-field",
        factory_with({"name": "x", "shape": ["batch"], "type": "float32"}),
        "inputs[0].type",
        "unknown field; allowed: name, shape, dtype, low, high",
    ),
    # --- space -----------------------------------------------------------------------------------
    case(
        "space-unknown-parameter",
        mod({"space.bach_size": [1, 2]}),
        "space",
        f"unknown parameter 'bach_size'; allowed: {KNOB_LIST}",
    ),
    case("space-empty", mod({"space": {}}), "space", "must define at least one parameter"),
    case("space-as-list", mod({"space": ["batch_size"]}), "space", NOT_A_MAPPING_LIST),
    case(
        "categorical-empty-choices",
        mod({"space.precision": {"type": "categorical", "choices": []}}),
        "space.precision",
        "choices must list at least one value",
    ),
    case(
        "categorical-empty-list-shorthand",
        mod({"space.precision": []}),
        "space.precision",
        "choices must list at least one value",
    ),
    case(
        "categorical-repeated-choice",
        mod({"space.precision": ["fp32", "bf16", "fp32"]}),
        "space.precision",
        "choices must not repeat a value; 'fp32' is listed twice",
    ),
    case(
        "int-range-low-above-high",
        mod({"space.batch_size": {"low": 64, "high": 1}}),
        "space.batch_size.low",
        "64 exceeds high (1)",
    ),
    case(
        "range-string-bound",
        mod({"space.batch_size": {"low": "1", "high": 4}}),
        "space.batch_size.low",
        "must be a number, got a string",
    ),
    case(
        "range-boolean-bound",
        mod({"space.batch_size": {"low": 1, "high": True}}),
        "space.batch_size.high",
        "must be a number, got a boolean",
    ),
    case(
        "float-range-without-low",
        mod({"space.batch_size": {"type": "float", "high": 32}}),
        "space.batch_size",
        "a float range needs both low and high",
    ),
    case(
        "choice-that-is-a-list",
        mod({"space.precision": [["fp32", "bf16"]]}),
        "space.precision.choices[0]",
        f"{NOT_A_SCALAR}, got a list",
    ),
    case(
        "int-range-fractional-bounds",
        mod({"space.batch_size": {"type": "int", "low": 1.5, "high": 32}}),
        "space.batch_size.low",
        "1.5 is not an integer; an int range needs integer bounds",
    ),
    case(
        "range-without-high",
        mod({"space.batch_size": {"type": "int", "low": 1}}),
        "space.batch_size",
        "an int range needs both low and high",
    ),
    case(
        "log-range-low-zero",
        mod({"space.batch_size": {"low": 0, "high": 32, "log": True}}),
        "space.batch_size.low",
        "must be above 0 in a log range, got 0",
    ),
    case(
        "step-with-log",
        mod({"space.batch_size": {"low": 1, "high": 32, "log": True, "step": 2}}),
        "space.batch_size",
        "step and log cannot be combined",
    ),
    case(
        "step-zero",
        mod({"space.batch_size": {"low": 1, "high": 32, "step": 0}}),
        "space.batch_size.step",
        "must be positive, got 0",
    ),
    case(
        "int-range-fractional-step",
        mod({"space.batch_size": {"type": "int", "low": 1, "high": 32, "step": 0.5}}),
        "space.batch_size.step",
        "0.5 is not an integer; an int range needs an integer step",
    ),
    case(
        "choices-on-int-param",
        mod({"space.batch_size": {"type": "int", "low": 1, "high": 32, "choices": [1, 2]}}),
        "space.batch_size.choices",
        "does not apply to an int parameter",
    ),
    case(
        "log-on-categorical",
        mod({"space.threads": {"choices": [1, 2], "log": True}}),
        "space.threads.log",
        "does not apply to a categorical parameter",
    ),
    case(
        "fixed-without-value",
        mod({"space.threads": {"type": "fixed"}}),
        "space.threads",
        "a fixed parameter needs a value",
    ),
    case(
        "param-unknown-type",
        mod({"space.threads": {"type": "integer", "low": 1, "high": 4}}),
        "space.threads.type",
        "Input should be 'categorical', 'int', 'float' or 'fixed'",
    ),
    case(
        "param-unknown-field",
        mod({"space.batch_size": {"low": 1, "high": 32, "lg": True}}),
        "space.batch_size.lg",
        "unknown field; allowed: type, choices, low, high, step, log, value, when",
    ),
    case(
        "unknown-backend",
        mod({"space.backend": ["torch-eager", "tensorrt"]}),
        "space.backend",
        f"'tensorrt' is not a known backend; allowed: {BACKEND_LIST}",
    ),
    case(
        "backend-continuous-range",
        mod({"space.backend": {"low": 0.5, "high": 2.0}}),
        "space.backend",
        "must be categorical or fixed, not a float range",
    ),
    case(
        "backend-int-range",
        mod({"space.backend": {"low": 1, "high": 2}}),
        "space.backend",
        "must be categorical or fixed, not an int range",
    ),
    case(
        "when-names-non-parameter",
        mod({"space.precision": {"choices": ["fp32", "int8-dynamic"], "when": {"device": ["cuda"]}}}),
        "space.precision.when",
        "names 'device', which is not another parameter; allowed: backend, batch_size, threads",
    ),
    case(
        "when-names-itself",
        mod({"space.threads": {"choices": [1, 2], "when": {"threads": [1]}}}),
        "space.threads.when",
        "names 'threads' itself; a condition must name another parameter",
    ),
    case(
        "when-impossible-value",
        mod({"space.precision": {"choices": ["fp32", "int8-dynamic"], "when": {"backend": ["tensorrt"]}}}),
        "space.precision.when.backend",
        "'tensorrt' is never a value of backend; its values: torch-eager, onnxruntime-cpu",
    ),
    case(
        "when-value-not-a-list",
        mod({"space.precision": {"choices": ["fp32"], "when": {"backend": "torch-eager"}}}),
        "space.precision.when.backend",
        "must be a list, got a string",
    ),
    case(
        "when-cycle",
        mod(
            {
                "space.precision": {"choices": ["fp32", "int8-dynamic"], "when": {"threads": [1]}},
                "space.threads": {"choices": [1, 2], "when": {"precision": ["fp32"]}},
            }
        ),
        "space",
        "conditions form a cycle: precision -> threads -> precision",
    ),
    # --- objectives and constraints ----------------------------------------------------------------
    case(
        "objectives-empty",
        mod({"objectives": []}),
        "objectives",
        "list at least one objective (at most 4)",
    ),
    case(
        "objectives-five",
        mod({"objectives": [{"metric": m, "direction": "minimize"} for m in list(METRICS)[:5]]}),
        "objectives",
        "list at most 4 objectives, got 5",
    ),
    case(
        "objective-unknown-metric",
        mod({"objectives.0.metric": "throughput"}),
        "objectives[0].metric",
        f"unknown metric 'throughput'; allowed: {METRIC_LIST}",
    ),
    case(
        "objective-bad-direction",
        mod({"objectives.0.direction": "max"}),
        "objectives[0].direction",
        "Input should be 'minimize' or 'maximize'",
    ),
    case(
        "objective-missing-direction",
        mod({"objectives.1.direction": DELETE}),
        "objectives[1].direction",
        "required field is missing",
    ),
    case(
        "objective-duplicate",
        mod({"objectives.1": {"metric": "throughput_items_s", "direction": "maximize"}}),
        "objectives[1].metric",
        "'throughput_items_s' is listed twice",
    ),
    case(
        "objective-unknown-field",
        mod({"objectives.0.goal": "max"}),
        "objectives[0].goal",
        "unknown field; allowed: metric, direction",
    ),
    case(
        "constraint-without-operator",
        mod({"constraints": ["accuracy_cosine 0.99"]}),
        "constraints[0]",
        "'accuracy_cosine 0.99' must look like 'METRIC <= NUMBER' (operators: <=, >=, <, >) "
        "or 'accuracy_task >= NUMBER * fp32'",
    ),
    case(
        "constraint-equals-operator",
        mod({"constraints": ["latency_p95_ms < 50", "accuracy_cosine == 0.99"]}),
        "constraints[1]",
        "'accuracy_cosine == 0.99' must look like 'METRIC <= NUMBER' (operators: <=, >=, <, >) "
        "or 'accuracy_task >= NUMBER * fp32'",
    ),
    case(
        "constraint-unknown-metric",
        mod({"constraints": ["accuracy >= 0.99"]}),
        "constraints[0]",
        f"unknown metric 'accuracy'; allowed: {METRIC_LIST}",
    ),
    case(
        "constraint-mapping-unknown-metric",
        mod({"constraints": [{"metric": "accuracy", "op": ">=", "bound": 0.99}]}),
        "constraints[0].metric",
        f"unknown metric 'accuracy'; allowed: {METRIC_LIST}",
    ),
    case(
        "constraint-mapping-bound-as-string",
        mod({"constraints": [{"metric": "accuracy_cosine", "op": ">=", "bound": "0.99"}]}),
        "constraints[0].bound",
        "must be a number, got a string",
    ),
    case(
        "constraints-not-a-list",
        mod({"constraints": "accuracy_cosine >= 0.99"}),
        "constraints",
        "must be a list, got a string",
    ),
    # --- budget, sampler -------------------------------------------------------------------------
    case("budget-trials-zero", mod({"budget.trials": 0}), "budget.trials", AT_LEAST_1),
    case(
        "budget-trials-fractional",
        mod({"budget.trials": 2.5}),
        "budget.trials",
        "Input should be a valid integer, got a number with a fractional part",
    ),
    case(
        "budget-wall-time-zero",
        mod({"budget.wall_time_s": 0}),
        "budget.wall_time_s",
        "Input should be greater than 0",
    ),
    case(
        "budget-unknown-field",
        mod({"budget": {"trial": 3}}),
        "budget.trial",
        "unknown field; allowed: trials, wall_time_s, measure_s",
    ),
    case(
        "sampler-unknown-type",
        mod({"sampler": {"type": "cmaes"}}),
        "sampler.type",
        "Input should be 'tpe', 'random', 'grid', 'nsga2' or 'gp'",
    ),
    case(
        "grid-with-log-range",
        mod({"sampler": {"type": "grid"}}),
        "sampler.type",
        GRID_NEEDS_FINITE,
    ),
    case(
        "grid-with-float-range",
        mod({"sampler": {"type": "grid"}, "space.batch_size": {"low": 1.0, "high": 32.0}}),
        "sampler.type",
        GRID_NEEDS_FINITE,
    ),
    # --- measurement, accuracy, pick, baseline ---------------------------------------------------
    case(
        "measurement-min-iters-above-max",
        mod({"measurement.min_iters": 100, "measurement.max_iters": 10}),
        "measurement.min_iters",
        "100 exceeds max_iters (10)",
    ),
    case(
        "measurement-min-time-above-max",
        mod({"measurement.min_time_s": 5}),
        "measurement.min_time_s",
        "5 exceeds max_time_s (1.5)",
    ),
    case(
        "measurement-max-iters-below-default-min",
        mod({"measurement.min_iters": DELETE, "measurement.max_iters": 5}),
        "measurement.max_iters",
        "5 is below min_iters (10)",
    ),
    case(
        "measurement-as-list",
        mod({"measurement": [10, 100]}),
        "measurement",
        NOT_A_MAPPING_LIST,
    ),
    case(
        "measurement-cv-target-zero",
        mod({"measurement.cv_target": 0}),
        "measurement.cv_target",
        "Input should be greater than 0",
    ),
    case(
        "measurement-first-look-not-shorter",
        mod({"measurement.first_look_s": 0.4}),
        "measurement.first_look_s",
        "0.4 is not under min_time_s (0.4); a first look is shorter than a trial (e.g. a quarter of "
        "min_time_s)",
    ),
    case(
        "measurement-unknown-field",
        mod({"measurement.warmup": 3}),
        "measurement.warmup",
        "unknown field; allowed: warmup_iters, min_iters, max_iters, min_time_s, max_time_s, "
        "cv_target, trial_timeout_s, keep_samples, max_foreign_load, load_repeats, workers, first_look_s",
    ),
    case(
        "accuracy-samples-zero",
        mod({"accuracy": {"samples": 0}}),
        "accuracy.samples",
        AT_LEAST_1,
    ),
    case(
        "pick-tie-break-bad-rule",
        mod({"pick.tie_break": "smallest:peak_memory_mb"}),
        "pick.tie_break",
        "rule 'smallest:peak_memory_mb' must look like 'min:METRIC' or 'max:METRIC'",
    ),
    case(
        "pick-tie-break-unknown-metric",
        mod({"pick.tie_break": "min:memory"}),
        "pick.tie_break",
        f"unknown metric 'memory'; allowed: {METRIC_LIST}",
    ),
    case(
        "pick-confidence-1",
        mod({"pick.confidence": 1.0}),
        "pick.confidence",
        "Input should be less than 1",
    ),
    case("pick-top-k-zero", mod({"pick.top_k": 0}), "pick.top_k", AT_LEAST_1),
    case(
        "pick-unknown-field",
        mod({"pick.topk": 3}),
        "pick.topk",
        "unknown field; allowed: top_k, rounds, max_rounds, time_s, confidence, tie_tolerance, tie_break, "
        "round_time_s",
    ),
    case(
        "baseline-key-not-in-space",
        mod({"baseline": {"batch_size": 8, "num_threads": 2}}),
        "baseline.num_threads",
        f"not a parameter of space; allowed: {SPACE_PARAMS}",
    ),
    case("baseline-as-list", mod({"baseline": ["threads"]}), "baseline", NOT_A_MAPPING_LIST),
    case(
        "baseline-value-list",
        mod({"baseline": {"threads": [1, 2]}}),
        "baseline.threads",
        f"{NOT_A_SCALAR}, got a list",
    ),
    case(
        "baseline-value-null",
        mod({"baseline": {"threads": None}}),
        "baseline.threads",
        f"{NOT_A_SCALAR}, got nothing",
    ),
    # --- values that are well-typed YAML but that no runner of the space can ever run ----------------
    case(
        "precision-no-runner-offers",
        mod({"space.precision": ["fp32", "fp8"]}),
        "space.precision",
        f"'fp8' is offered by no runner of the space (onnxruntime and torch); allowed: {PRECISIONS}",
    ),
    case(
        "precision-fixed-unknown",
        mod({"space.precision": "fp4"}),
        "space.precision",
        f"'fp4' is offered by no runner of the space (onnxruntime and torch); allowed: {PRECISIONS}",
    ),
    case(
        "precision-a-number",
        mod({"space.precision": 8}),
        "space.precision",
        f"8 is not a name; allowed: {PRECISIONS}",
    ),
    case(
        "precision-a-range",
        mod({"space.precision": {"low": 8, "high": 16}}),
        "space.precision",
        f"must list values, not a range; allowed: {PRECISIONS}",
    ),
    case(
        "precision-the-llm-runner-lacks",
        mod(
            {
                "space.backend": ["llm"],
                "space.precision": ["fp32", "int8-dynamic"],
                "model": {"builtin": "tiny-llama"},
            }
        ),
        "space.precision",
        "'int8-dynamic' is offered by no runner of the space (llm); allowed: bf16, fp16, fp32",
    ),
    case(
        "threads-zero",
        mod({"space.threads": [0, 1]}),
        "space.threads",
        "0 is not a valid threads; use whole numbers of at least 1",
    ),
    case(
        "threads-negative",
        mod({"space.threads": -2}),
        "space.threads",
        "-2 is not a valid threads; use whole numbers of at least 1",
    ),
    case(
        "threads-range-from-zero",
        mod({"space.threads": {"low": 0, "high": 2}}),
        "space.threads.low",
        "0 is below 1; threads is at least 1",
    ),
    case(
        "threads-float-range",
        mod({"space.threads": {"low": 1.5, "high": 4}}),
        "space.threads",
        "must be whole numbers: give an int range (integer low and high)",
    ),
    case(
        "threads-a-word",
        mod({"space.threads": ["two"]}),
        "space.threads",
        "'two' is not a valid threads; use whole numbers of at least 1",
    ),
    case(
        "threads-a-boolean",
        mod({"space.threads": [True]}),
        "space.threads",
        "True is not a valid threads; use whole numbers of at least 1",
    ),
    case(
        "batch-negative-range",
        mod({"space.batch_size": {"low": -4, "high": 8}}),
        "space.batch_size.low",
        "-4 is below 1; batch_size is at least 1",
    ),
    case(
        "batch-zero",
        mod({"space.batch_size": 0}),
        "space.batch_size",
        "0 is not a valid batch_size; use whole numbers of at least 1",
    ),
    case(
        "batch-fractional-choice",
        mod({"space.batch_size": [1, 2.5]}),
        "space.batch_size",
        "2.5 is not a valid batch_size; use whole numbers of at least 1",
    ),
    case(
        "device-unknown",
        mod({"space.device": ["tpu"]}),
        "space.device",
        "'tpu' is offered by no runner of the space (torch); allowed: cpu, cuda",
    ),
    case(
        "compile-mode-unknown",
        mod({"space.backend": ["torch-compile"], "space.compile_mode": ["fastest"]}),
        "space.compile_mode",
        "'fastest' is offered by no runner of the space (torch); allowed: default, max-autotune, "
        "max-autotune-no-cudagraphs, reduce-overhead",
    ),
    case(
        "graph-optimization-level-unknown",
        mod({"space.graph_optimization_level": ["all", "max"]}),
        "space.graph_optimization_level",
        "'max' is offered by no runner of the space (onnxruntime); allowed: all, basic, disable, extended",
    ),
    case(
        "execution-mode-unknown",
        mod({"space.execution_mode": ["async"]}),
        "space.execution_mode",
        "'async' is offered by no runner of the space (onnxruntime); allowed: parallel, sequential",
    ),
    case(
        "attention-unknown",
        mod(
            {
                "space.backend": ["llm"],
                "space.precision": ["fp32"],
                "space.attn_implementation": ["flash3"],
                "model": {"builtin": "tiny-llama"},
            }
        ),
        "space.attn_implementation",
        "'flash3' is offered by no runner of the space (llm); allowed: eager, flash_attention_2, sdpa",
    ),
    case(
        "baseline-backend-outside-space",
        mod({"baseline": {"backend": "tensorflow"}}),
        "baseline.backend",
        "'tensorflow' is not a value of space.backend; its values: torch-eager, onnxruntime-cpu",
    ),
    case(
        "baseline-threads-outside-space",
        mod({"baseline": {"threads": 4}}),
        "baseline.threads",
        "4 is not a value of space.threads; its values: 1, 2",
    ),
    case(
        "baseline-threads-boolean",
        mod({"baseline": {"threads": True}}),
        "baseline.threads",
        "True is not a value of space.threads; its values: 1, 2",
    ),
    case(
        "baseline-batch-outside-log-range",
        mod({"baseline": {"batch_size": 64}}),
        "baseline.batch_size",
        "64 is outside space.batch_size (1 to 32)",
    ),
    case(
        "baseline-batch-a-word",
        mod({"baseline": {"batch_size": "eight"}}),
        "baseline.batch_size",
        "'eight' is outside space.batch_size (1 to 32)",
    ),
    case(
        "baseline-precision-outside-space",
        mod({"baseline": {"precision": "fp16"}}),
        "baseline.precision",
        "'fp16' is not a value of space.precision; its values: fp32, bf16, int8-dynamic",
    ),
    # --- files no parser should be asked to read --------------------------------------------------
    case(
        "yaml-20000-deep-lists",
        "name: q\nspace: " + "[" * 20000 + "]" * 20000 + "\n",
        "",
        "nests lists and mappings too deeply to be a spec",
    ),
    case(
        "yaml-20000-deep-mappings",
        "name: q\nspace: " + "{a: " * 20000 + "1" + "}" * 20000 + "\n",
        "",
        "nests lists and mappings too deeply to be a spec",
    ),
    case(
        "oversized-file",
        "name: q\n" + "# padding\n" * 200_000,
        "",
        "is 1.9 MiB; a spec file is at most 1 MiB",
    ),
]


def _write(tmp_path: Path, content: Any) -> None:
    target = tmp_path / FILE
    if content is MISSING:
        return
    if content is DIRECTORY:
        target.mkdir()
    elif isinstance(content, bytes):
        target.write_bytes(content)
    elif isinstance(content, str):
        target.write_text(content, encoding="utf-8")
    else:
        target.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 130
    ids = [p.id for p in CASES]
    assert len(set(ids)) == len(ids)


def test_base_spec_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, BASE)
    spec = load_spec(FILE)
    assert isinstance(spec, Spec)
    assert spec.name == "quickstart"


def test_shipped_quickstart_is_valid() -> None:
    assert load_spec(ROOT / "search_spaces" / "quickstart.yaml").name == "quickstart"


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path: Path) -> None:
    # The examples are what users copy: each must pass the checks a run applies before its study.
    assert load_spec(path).name


def test_allowed_lists_name_the_intended_values() -> None:
    # The "allowed:" tails must offer the fix for the typos used in the corpus.
    assert "batch_size" in KNOB_LIST.split(", ")
    assert "tiny-transformer" in BUILTIN_LIST.split(", ")
    assert "torch-eager" in BACKEND_LIST.split(", ")
    assert {"throughput_items_s", "peak_memory_mb", "accuracy_cosine"} <= set(METRIC_LIST.split(", "))


@pytest.mark.parametrize(("content", "path", "problem"), CASES)
def test_malformed_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: Any, path: str, problem: str
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, content)
    with pytest.raises(SpecError) as info:
        load_spec(FILE)
    err = info.value
    expected = f"{FILE}: {path}: {problem}" if path else f"{FILE}: {problem}"
    assert str(err) == expected
    assert err.file == FILE
    assert "\n" not in str(err)
    assert isinstance(err, UsageError)
    assert err.exit_code == 2
    # `run` refuses it the same way, before a study or a report exists.
    with pytest.raises(SpecError) as again:
        run(FILE, progress=Progress(quiet=True))
    assert str(again.value) == expected
    assert not (tmp_path / "studies").exists()
    assert not (tmp_path / "reports").exists()


def test_yaml_merge_key_may_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A key given next to a '<<' merge replaces the merged one; that is not a duplicate.
    monkeypatch.chdir(tmp_path)
    text = yaml.safe_dump(mod({"measurement": DELETE}), sort_keys=False)
    text += "measurement:\n  <<: {warmup_iters: 1, min_iters: 5}\n  min_iters: 7\n"
    (tmp_path / FILE).write_text(text, encoding="utf-8")
    assert load_spec(FILE).measurement.min_iters == 7


def test_exponent_without_a_dot_is_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # PyYAML reads 5e-1 as a string (YAML 1.1 wants 5.0e-1); the spec loader reads it as a number,
    # so that refusing string bounds does not refuse a number written that way.
    monkeypatch.chdir(tmp_path)
    text = yaml.safe_dump(mod({"measurement": DELETE}), sort_keys=False)
    text += "measurement: {min_time_s: 5e-2, max_time_s: 1E0}\n"
    (tmp_path / FILE).write_text(text, encoding="utf-8")
    m = load_spec(FILE).measurement
    assert (m.min_time_s, m.max_time_s) == (0.05, 1.0)


# --- the command line ------------------------------------------------------------------------------

BAD_SPEC = (
    "name: q\n"
    "model: {builtin: tiny-transformer}\n"
    "space: {bach_size: [1, 2]}\n"
    "objectives: [{metric: latency_p95_ms, direction: minimize}]\n"
)


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "BAD.yaml").write_text(BAD_SPEC, encoding="utf-8")
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    return subprocess.run(
        [sys.executable, "-m", "autotuner.cli", "run", "BAD.yaml", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_reports_a_bad_spec_in_one_line(tmp_path: Path) -> None:
    proc = _cli(tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    expected = f"BAD.yaml: space: unknown parameter 'bach_size'; allowed: {KNOB_LIST}"
    assert lines[0] == f"autotune: error: {expected}"
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "studies").exists()
    assert not (tmp_path / "reports").exists()


def test_cli_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "--debug")
    assert proc.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in proc.stderr
    assert "autotuner.errors.SpecError: BAD.yaml: space: unknown parameter 'bach_size'" in proc.stderr
    assert "autotune: error:" not in proc.stderr
    assert not (tmp_path / "studies").exists()
