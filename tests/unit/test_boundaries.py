"""The house's boundaries, for every module of the package, found automatically:
- only `raylpclip.runtime` imports Ray: an AST scan of every file (imports inside functions included),
  and every other module imported in a process of its own, after which `ray` must not be loaded;
- only `raylpclip.distributed` and the `raylpclip.parallel` package touch `torch.distributed` (imports and
  attribute access alike);
- no file over 300 lines, and no two files with the same name.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "raylpclip"
RAY_PACKAGE = "raylpclip.runtime"
DISTRIBUTED_MODULE = "raylpclip.distributed"
PARALLEL_PACKAGE = "raylpclip.parallel"  # sharding strategies beside it (architecture.md: "a parallel/ package")
MAX_LINES = 300

# Imports each module in a child forked from a process that holds only third-party libraries (checked
# to be Ray-free), so that every module starts from no raylpclip state at all, in milliseconds rather
# than the seconds a new interpreter spends importing torch.
IMPORT_EACH = r"""
import importlib, json, os, pkgutil, sys
import matplotlib.figure, matplotlib.backends.backend_agg, numpy, omegaconf, PIL.Image, pyarrow.parquet
import safetensors.torch, torch, tokenizers
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
assert "ray" not in sys.modules, "a third-party library imported Ray"
import raylpclip

results = {}
for info in pkgutil.walk_packages(raylpclip.__path__, "raylpclip."):
    runtime = info.name.startswith("%(runtime)s.")
    if info.name.endswith(".__main__") or (runtime and info.name != "%(control)s"):
        continue  # runtime/ may import Ray: one of its modules is imported, to show that the check sees it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(info.name)
            outcome = {"ray": "ray" in sys.modules}
        except BaseException as exc:
            outcome = {"error": repr(exc)}
        os.write(write, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        results[info.name] = json.loads(pipe.read() or '{"error": "the child died"}')
    os.waitpid(pid, 0)
print(json.dumps(results))
""" % {"runtime": RAY_PACKAGE, "control": "raylpclip.runtime.cluster.counters"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _ray_imports(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        if any(n == "ray" or n.startswith("ray.") for n in names):
            lines.append(node.lineno)
    return lines


def _distributed_uses(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (
                (node.module or "").startswith("torch.distributed")
                or (node.module == "torch" and any(a.name == "distributed" for a in node.names))):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Attribute) and node.attr == "distributed"
              and isinstance(node.value, ast.Name) and node.value.id == "torch"):
            lines.append(node.lineno)
    return lines


def test_the_scan_finds_what_it_looks_for():
    """The scanners on code that breaks each rule (so that a silent scanner cannot pass the tree)."""
    bad = ast.parse("def f():\n    import ray.train\n    from ray import tune\n"
                    "import torch\nx = torch.distributed.get_rank()\nfrom torch import distributed\n")
    assert sorted(_ray_imports(bad)) == [2, 3] and sorted(_distributed_uses(bad)) == [5, 6]
    assert _ray_imports(ast.parse("import raylpclip\nfrom raylpclip.runtime import x\n")) == []


def test_only_runtime_imports_ray_and_only_distributed_touches_torch_distributed():
    modules = _modules()
    assert len(modules) > 80 and RAY_PACKAGE in modules and DISTRIBUTED_MODULE in modules
    ray_outside, distributed_outside = {}, {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        if not _inside(module, RAY_PACKAGE) and _ray_imports(tree):
            ray_outside[module] = _ray_imports(tree)
        if module != DISTRIBUTED_MODULE and not _inside(module, PARALLEL_PACKAGE) and _distributed_uses(tree):
            distributed_outside[module] = _distributed_uses(tree)
    assert not ray_outside, f"imports ray outside {RAY_PACKAGE} (module: lines): {ray_outside}"
    assert not distributed_outside, f"torch.distributed outside {DISTRIBUTED_MODULE} and {PARALLEL_PACKAGE}: {distributed_outside}"


def test_core_imports_without_ray():
    """Every module outside runtime/, imported alone in a fresh process, leaves Ray unloaded."""
    out = subprocess.run([sys.executable, "-c", IMPORT_EACH], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    outside = {m for m in _modules() if not _inside(m, RAY_PACKAGE) and m not in ("raylpclip", "raylpclip.__main__")}
    assert outside <= set(results), f"pkgutil did not find {sorted(outside - set(results))}"
    errors = {m: r["error"] for m, r in results.items() if "error" in r}
    assert not errors, errors
    loads_ray = sorted(m for m, r in results.items() if r["ray"] and not _inside(m, RAY_PACKAGE))
    assert not loads_ray, f"importing these modules loads Ray: {loads_ray}"
    assert results["raylpclip.runtime.cluster.counters"]["ray"]  # the check can see Ray


def test_files_are_short_and_their_names_unique():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"
    names = defaultdict(list)
    for p in PACKAGE.rglob("*.py"):
        if p.name != "__init__.py":
            names[p.name].append(str(p.relative_to(PACKAGE)))
    assert not {n: v for n, v in names.items() if len(v) > 1}
