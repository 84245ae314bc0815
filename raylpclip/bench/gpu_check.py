"""The GPU check, tier 1 (`bash scripts/gpu_check.sh`, or `python -m raylpclip.bench.gpu_check`): the
GPU-marked tests and the timed training step of the ViT-B presets at bf16, on one GPU, with no Ray.

It needs only torch and transformers (and pytest for the tests): nothing it imports loads Ray or omegaconf
(models/clip.py and engine/optim.py import the config lazily for that), so a bare GPU box runs it. Without a
CUDA device it skips: it prints "no CUDA device: skipped", writes a summary.json that says so and exits 0.
`--cpu-smoke` runs the same step code on CPU with the tiny preset for two steps (what the unit tests do).

Outputs in the output directory (--out, else $OUT, else runs/gpu-check): summary.json (the figures below and
the tests' counts), gpu_tests.xml (pytest's JUnit report) and a table on stdout. docs/gpu_check.md explains
them. Exit status: 0 when everything that ran passed (or nothing could run), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
GPU_TESTS = "tests/unit/test_gpu_paths.py"
# Batch sizes per preset that fit an 80 GB H100 with a wide margin at bf16 without gradient checkpointing
# (about 10 and 20 GB); --batch overrides them. Step counts bound the whole tier to a few minutes.
DEFAULT_BATCHES = {"vit-b-32": [256], "vit-b-16": [128]}
TIER2 = ("raylpclip bench train jobs/bench-train.yaml model.preset=vit-b-32 data.image_size=224 "
         "data.context_length=77 bench.synthetic_image_size=256 train.use_gpu=true train.precision=bf16 "
         "train.batch_size=256 bench.two_workers=false bench.rounds=1")
USAGE_EPILOG = f"""\
Tier 2, where Ray is installed (a GPU cluster, or a box with the full install): the whole pipeline, shards ->
Ray Data -> Ray Train worker -> the same step, against its in-memory compute limit:

    {TIER2}

(--tier2 runs it after tier 1 when `import ray` works; on a cluster, submit it like a run.)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0],
                                epilog=USAGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="output directory (default: $OUT, else runs/gpu-check)")
    p.add_argument("--presets", default="vit-b-32,vit-b-16", help="comma-separated presets to time")
    p.add_argument("--batch", action="append", default=[], metavar="PRESET=B[,B...]",
                   help="batch sizes of a preset (repeatable), e.g. --batch vit-b-16=128,256")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per preset and batch size")
    p.add_argument("--steps", type=int, default=20, help="timed steps per preset and batch size")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", action="store_true", help="torch.compile the towers in the timed steps too")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak dense bf16 TFLOP/s "
                   "(0: look it up by name; unknown names get no MFU)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="stop starting new timings past this many seconds (the whole tier within 8 minutes)")
    p.add_argument("--skip-tests", action="store_true", help="only the timed steps")
    p.add_argument("--cpu-smoke", action="store_true", help="no GPU needed: the tiny preset for 2 steps on CPU")
    p.add_argument("--tier2", action="store_true", help="also run tier 2 when Ray is importable")
    return p.parse_args(argv)


def batch_plan(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(preset, batch size) pairs to time, in order."""
    sizes = {k: list(v) for k, v in DEFAULT_BATCHES.items()}
    for item in args.batch:
        preset, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"gpu_check: --batch {item!r}: expected PRESET=B[,B...]")
        sizes[preset] = [int(v) for v in values.split(",")]
    presets = [p for p in args.presets.split(",") if p]
    return [(p, b) for p in presets for b in sizes.get(p, [64])]


def output_dir(args: argparse.Namespace) -> Path:
    out = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_gpu_tests(out: Path) -> dict[str, Any]:
    """The GPU-marked tests in a child pytest (its own CUDA context and failures); counts from its JUnit XML."""
    junit = out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", GPU_TESTS, "-m", "gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={junit}"]
    start = time.perf_counter()
    code = subprocess.call(cmd, cwd=REPO)
    result: dict[str, Any] = {"exit_code": code, "wall_s": time.perf_counter() - start, "command": " ".join(cmd[1:])}
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        result["failed"] = [f"{case.get('name')}: {bad.get('message', '')[:300]}" for case in suite.iter("testcase")
                            for bad in [*case.findall("failure"), *case.findall("error")]]
    return result


def environment(device) -> dict[str, Any]:
    import torch
    import transformers

    env = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__, "device": "cpu"}
    if device.type == "cuda":
        from raylpclip.engine.model_flops import peak_name

        props = torch.cuda.get_device_properties(device)
        env.update(device=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   memory_gib=props.total_memory / 2 ** 30, multiprocessors=props.multi_processor_count,
                   peak_table_row=peak_name(torch.cuda.get_device_name(device)))
    return env


def time_all(plan: list[tuple[str, int]], device, args: argparse.Namespace, start: float) -> list[dict[str, Any]]:
    import torch

    from raylpclip.bench.preset_step import time_preset

    results = []
    for preset, batch in plan:
        if time.perf_counter() - start > args.budget_s:
            results.append({"preset": preset, "batch_size": batch, "skipped": f"past --budget-s {args.budget_s:.0f}"})
            continue
        print(f"[gpu_check] {preset} batch {batch}: {args.warmup} warm-up + {args.steps} timed steps", flush=True)
        try:
            results.append(time_preset(preset, batch, device, warmup=args.warmup, steps=args.steps,
                                       precision=args.precision, compile_towers=args.compile,
                                       peak_tflops=args.peak_tflops))
        except torch.cuda.OutOfMemoryError as exc:  # a batch too large is a finding, not the end of the check
            results.append({"preset": preset, "batch_size": batch, "error": f"out of memory: {str(exc)[:200]}"})
    return results


def format_table(steps: list[dict[str, Any]]) -> str:
    head = f"{'preset':<10} {'batch':>5} {'step s':>8} {'samples/s':>10} {'GFLOP/sample':>12} {'TFLOP/s':>8} " \
           f"{'MFU':>6} {'peak GiB':>8}  loss"
    rows = [head]
    for r in steps:
        if "samples_per_s" not in r:
            rows.append(f"{r['preset']:<10} {r['batch_size']:>5} {r.get('error') or r.get('skipped')}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        memory = f"{r['peak_memory_gib']:.1f}" if "peak_memory_gib" in r else "-"
        rows.append(f"{r['preset']:<10} {r['batch_size']:>5} {r['step_time_s']:>8.4f} {r['samples_per_s']:>10.1f} "
                    f"{r['train_gflops_per_sample']:>12.2f} {r['achieved_tflops']:>8.1f} {mfu:>6} {memory:>8}  "
                    f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}")
    return "\n".join(rows)


def ray_available() -> bool:
    return subprocess.call([sys.executable, "-c", "import ray"], stderr=subprocess.DEVNULL) == 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    out = output_dir(args)
    import torch

    summary: dict[str, Any] = {"tier": 1, "tier2_command": TIER2}
    if args.cpu_smoke:
        device = torch.device("cpu")
        args.presets, args.batch, args.warmup, args.steps, args.skip_tests = "tiny", ["tiny=8"], 1, 1, True
    elif not torch.cuda.is_available():
        print("no CUDA device: skipped", flush=True)
        summary.update(skipped="no CUDA device", environment=environment(torch.device("cpu")))
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        return 0
    else:
        device = torch.device("cuda")
    summary["environment"] = environment(device)
    summary["cpu_smoke"] = args.cpu_smoke
    if not args.skip_tests:
        summary["tests"] = run_gpu_tests(out)
    summary["steps"] = time_all(batch_plan(args), device, args, start)
    if args.tier2:
        summary["tier2"] = _tier2()
    summary["wall_s"] = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary["steps"]), flush=True)
    print(f"[gpu_check] {summary['environment']['device']}: summary in {out / 'summary.json'} "
          f"({summary['wall_s']:.0f} s)", flush=True)
    return 0 if _passed(summary) else 1


def _tier2() -> dict[str, Any]:
    if not ray_available():
        print("[gpu_check] tier 2: Ray is not installed here; run it where it is:\n  " + TIER2, flush=True)
        return {"skipped": "ray not importable"}
    code = subprocess.call([sys.executable, "-m", "raylpclip", *TIER2.split()[1:]], cwd=REPO)
    return {"exit_code": code}


def _passed(summary: dict[str, Any]) -> bool:
    tests_ok = summary.get("tests", {}).get("exit_code", 0) == 0
    steps_ok = all("error" not in r and r.get("loss_finite", True) for r in summary["steps"])
    return tests_ok and steps_ok and summary.get("tier2", {}).get("exit_code", 0) == 0


if __name__ == "__main__":
    sys.exit(main())
