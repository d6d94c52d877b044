#!/bin/bash
# Routed-attention GPU checks: the `gpu`-marked tests and the attention benchmark on the lent GPU machine
# (Python 3.12, x86-64, torch already installed there; no network). Same scheme as ../shared/gpu/wheels.sh:
# wheels are downloaded here, carried with the working tree, installed there under /tmp/site.
#
#   1. here, in the project's root:   benchmarks/gpu.sh fetch
#      -> .whl-test/ (pytest, hypothesis and their pure-Python dependencies, ~3 MB). The routed-attention
#         layers and their tests need torch only, not nnU-Net; .whl-test/ is untracked: do not commit it.
#   2. on the GPU machine (the device tool's `run`, in the repository root):   bash benchmarks/gpu.sh remote
#      -> runs `pytest -m gpu` on the routed-attention tests, then the benchmark with --device cuda, and
#         copies benchmarks/results/attention-cuda*.json and the logs to $OUT.
#   3. here: copy the fetched attention-cuda.json / .meta.json into benchmarks/results/ and fill in the GPU
#      section of BENCHMARKS.md.
set -euo pipefail
case "${1:-}" in
  fetch)
    plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    mkdir -p .whl-test
    for p in pytest pluggy iniconfig packaging hypothesis attrs sortedcontainers; do
      python3 -m pip download -q --no-deps "${plat[@]}" -d .whl-test "$p"
    done
    du -sh .whl-test
    ;;
  remote)
    out="${OUT:-/tmp/out}"
    mkdir -p "$out" /tmp/site
    if ! python3 -c "import pytest, hypothesis" 2>/dev/null; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl-test/*.whl
    fi
    export PYTHONPATH=/tmp/site:$PWD
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
    # gpu-marked tests first (flex gradients against the float64 reference, fp16 autocast), then the rest
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_routed_attention.py 2>&1 | tee "$out/pytest-gpu.log"
    python3 -m pytest -q -p no:cacheprovider -m "not gpu" tests/test_routed_attention.py 2>&1 | tail -5 \
      | tee "$out/pytest-cpu-on-gpu-machine.log"
    python3 benchmarks/attention.py --device cuda --threads 16 2>&1 | tee "$out/bench-cuda.log"
    cp benchmarks/results/attention-cuda.json benchmarks/results/attention-cuda.meta.json "$out/"
    ;;
  *)
    echo "usage: benchmarks/gpu.sh fetch|remote" >&2
    exit 2
    ;;
esac
