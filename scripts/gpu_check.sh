#!/usr/bin/env bash
# The GPU check in one command: `bash scripts/gpu_check.sh [options]` from anywhere (docs/gpu_check.md).
#
# Tier 1 (this script): the GPU-marked tests and the bf16 training step of the vit-b-32 and vit-b-16 presets,
# timed (samples/s, step time, MFU, peak memory) into summary.json. Needs Python with torch, transformers and
# pytest; no Ray, omegaconf or s3fs (nothing it imports loads them). Without a CUDA device it prints
# "no CUDA device: skipped", writes a summary.json saying so and exits 0. Bounded to about 7 minutes on an H100.
#
# Options go to `python -m raylpclip.bench.gpu_check` (--help lists them, tier 2 included): --out DIR,
# --presets, --batch PRESET=B[,B], --warmup N, --steps N, --compile, --peak-tflops T, --skip-tests,
# --cpu-smoke (no GPU needed), --tier2 (the Ray pipeline, where Ray is installed).
#
# Environment: PYTHON (default: the repo's .venv/bin/python if present, else python3); GPU_CHECK_WHEELS, a
# folder of wheels for a box without internet (default: .whl/ in the repo, used when it holds any *.whl):
# they are installed with --no-index into a temporary folder put on PYTHONPATH, never into the system.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

wheels="${GPU_CHECK_WHEELS:-$repo/.whl}"
if compgen -G "$wheels/*.whl" > /dev/null; then
  site="$(mktemp -d -t gpu-check-site.XXXXXX)"
  trap 'rm -rf "$site"' EXIT
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "[gpu_check] installed $(ls "$wheels"/*.whl | wc -l) carried wheel(s) from $wheels into $site"
fi

export PYTHONUNBUFFERED=1
status=0
"$PYTHON" -m raylpclip.bench.gpu_check "$@" || status=$?
exit "$status"  # not exec: the EXIT trap removes the temporary site folder
