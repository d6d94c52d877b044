#!/usr/bin/env bash
# The prepared GPU run (issue 11): every check that needs CUDA, in as few device calls as the 15 device minutes allow.
# docs/gpu.md ("The prepared GPU run", linked from BENCHMARKS.md) gives the exact device-tool calls, their carry
# lists, time caps and expected durations.
#
#   benchmarks/gpu.sh fetch            here, once: nnU-Net's wheels (../shared/gpu/wheels.sh -> .whl-sitk/, .whl-nnunet/)
#                                      and the preprocessed data of the second command (.gpu-data/); all git-ignored
#   benchmarks/gpu.sh main             on the GPU machine, carry [".whl-nnunet"] (<= 6.5 min, no SimpleITK):
#                                        env             nnU-Net's wheels into /tmp/site (not SimpleITK); versions
#                                        tests           the gpu-marked tests of every module that needs no SimpleITK
#                                        speed-eager     benchmarks.network_speed, CUDA eager, three plans + inference
#                                        speed-compiled  benchmarks.network_speed, CUDA, torch.compile, two plans
#                                        attention       benchmarks.attention, CUDA, the 12.5 %-density case
#                                        memory          benchmarks.training_memory, CUDA: predicted training
#                                                        memory against max_memory_allocated, two plans
#   benchmarks/gpu.sh sitk             optional, carry [".whl-sitk"]: SimpleITK into /tmp/site (stays while the
#                                      machine is warm: start the next call at once)
#   benchmarks/gpu.sh nnunet           optional, right after sitk, carry [".whl-nnunet", ".gpu-data"]:
#                                        env, tests-nnunet (gpu tests whose module imports nnU-Net's trainer),
#                                        train (nnUNetv2_train nnUNetTrainerBSA_bench1x20, compile on), predict
#   options: --only STEP (rerun one step; env always runs)   --dry-run (every step on the CPU at tiny sizes; no wheels
#            installed: modules the GPU machine lacks are blocked instead)   --out DIR (default $OUT)   --data DIR
#
# Each step runs under its own `timeout`, so one slow step cannot eat the others' time; results are saved as they are
# made, so a step stopped at its cap keeps what it measured. What comes back ($OUT, at most 3 files):
#   gpu-<command>.json (each step's status, seconds, cap, and every results JSON), gpu-<command>.log (all output),
#   gpu-<command>.tar.gz (the results JSONs, per-step logs, pytest's junit XML).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
SITE=/tmp/site

# Test modules with gpu-marked tests, by what their imports need (tests/test_gpu_script.py checks the split). The
# second list imports nnU-Net's trainer module, which pulls SimpleITK in through nnU-Net's evaluation code.
MAIN_TESTS="tests/test_routed_attention.py tests/test_bsa.py tests/test_mdsa.py tests/test_bilateral.py
tests/test_narrow_band.py"
NNUNET_TESTS="tests/test_optimizers.py"
# Not on the GPU machine and not carried with the main command (the dry run blocks them to prove it needs none)
MAIN_BLOCKED="SimpleITK monai pysodmetrics"
NNUNET_BLOCKED="monai pysodmetrics"

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

CMD="" DRY=0 ONLY="" OUTDIR="${OUT:-}" DATA="$ROOT/.gpu-data"
while [ $# -gt 0 ]; do
  case "$1" in
    fetch|main|sitk|nnunet) CMD=$1 ;;
    --dry-run) DRY=1 ;;
    --only) ONLY=${2:-}; shift ;;
    --out) OUTDIR=${2:-}; shift ;;
    --data) DATA=${2:-}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu.sh: unknown argument '$1' (see benchmarks/gpu.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$CMD" ] || { echo "gpu.sh: name a command: fetch, main, sitk or nnunet (see --help)" >&2; exit 2; }

case "$CMD:$ONLY" in
  *:|main:tests|main:speed-eager|main:speed-compiled|main:attention|main:memory|nnunet:tests-nnunet|nnunet:train|nnunet:predict) ;;
  *) echo "gpu.sh: $CMD has no step '$ONLY'" >&2; exit 2 ;;
esac

if [ "$CMD" = fetch ]; then
  set -e
  bash "$ROOT/../shared/gpu/wheels.sh"
  "$PY" -m benchmarks.gpu_nnunet prepare --data "$DATA" >/dev/null
  du -sh .whl-sitk .whl-nnunet "$DATA"
  exit 0
fi

if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  WORK=$(mktemp -d /tmp/gpu-dry-run.XXXXXX)
  OUTDIR=${OUTDIR:-$WORK/out}
else
  DEVICE=cuda
  WORK=/tmp/gpu-work-$CMD
  rm -rf "$WORK"
fi
[ -n "$OUTDIR" ] || { echo "gpu.sh: no output folder: set OUT (the device tool does) or pass --out DIR" >&2; exit 2; }
mkdir -p "$WORK/logs" "$WORK/results" "$OUTDIR"
LOG="$WORK/run.log"
: > "$WORK/steps.tsv"
echo "gpu.sh $CMD (device $DEVICE${ONLY:+, only $ONLY}) in $ROOT, $(date -u +%FT%TZ)" | tee "$LOG"

# ---------------------------------------------------------------------------------------------------- helpers
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$WORK/steps.tsv"; }

# step NAME CAP_SECONDS COMMAND...: run unless --only names another step; its own time cap; output to the log
step() {
  local name=$1 cap=$2
  shift 2
  if [ -n "$ONLY" ] && [ "$ONLY" != "$name" ]; then return 0; fi
  echo "=== $name (cap ${cap} s): $*" | tee -a "$LOG"
  local t0 rc
  t0=$(date +%s.%N)
  timeout -k 10 "$cap" "$@" 2>&1 | tee -a "$LOG" > "$WORK/logs/$name.log"
  rc=${PIPESTATUS[0]}
  local seconds
  seconds=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  echo "=== $name: exit $rc after $seconds s" | tee -a "$LOG"
  record "$name" "$rc" "$cap" "$seconds"
}

# The modules a command must not need, made unimportable (dry run only): a folder first on PYTHONPATH
block() {
  local name
  for name in "$@"; do
    mkdir -p "$WORK/blocked/$name"
    echo "raise ImportError('$name is not on the GPU machine for this command (benchmarks/gpu.sh)')" \
      > "$WORK/blocked/$name/__init__.py"
  done
}

pack() {
  "$PY" - "$WORK" "$OUTDIR" "$CMD" "$DEVICE" "$DRY" <<'PYTHON'
import json, sys, tarfile
from pathlib import Path

work, out, cmd, device, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
steps = []
for line in (work / "steps.tsv").read_text().splitlines():
    name, rc, cap, seconds = line.split("\t")
    rc = int(rc)
    status = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else f"failed (exit {rc})")
    steps.append({"step": name, "status": status, "seconds": float(seconds), "cap_s": int(cap)})
results = {}
for path in sorted((work / "results").glob("*.json")):
    try:
        results[path.name] = json.loads(path.read_text())
    except ValueError as error:  # a step killed while writing: say so, keep the rest
        results[path.name] = {"unreadable": str(error)}
summary = {"command": cmd, "device": device, "dry_run": dry, "steps": steps, "results": results}
(out / f"gpu-{cmd}.json").write_text(json.dumps(summary, indent=1) + "\n")
(out / f"gpu-{cmd}.log").write_text((work / "run.log").read_text())
with tarfile.open(out / f"gpu-{cmd}.tar.gz", "w:gz") as tar:
    for folder in ("results", "logs"):
        tar.add(work / folder, arcname=folder)
for s in steps:
    print(f"{s['step']:16s} {s['status']:18s} {s['seconds']:7.1f} s (cap {s['cap_s']} s)")
PYTHON
}

# ------------------------------------------------------------------------------------------------ environment
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
t0=$(date +%s.%N)
env_rc=0
if [ "$DRY" = 1 ]; then
  if [ "$CMD" = main ]; then block $MAIN_BLOCKED; else block $NNUNET_BLOCKED; fi
  export PYTHONPATH="$WORK/blocked:$ROOT"
else
  export PYTHONPATH="$SITE:$ROOT" PATH="$SITE/bin:$PATH"
  case "$CMD" in
    sitk) wheels=.whl-sitk ;;
    *) wheels=.whl-nnunet ;;
  esac
  if ! ls "$wheels"/*.whl > /dev/null 2>&1; then
    echo "gpu.sh: no wheels in $wheels: run benchmarks/gpu.sh fetch here and carry $wheels" | tee -a "$LOG"
    env_rc=2
  else
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$wheels"/*.whl 2>&1 | tail -3 | tee -a "$LOG"
    env_rc=${PIPESTATUS[0]}
  fi
  if [ "$CMD" = nnunet ] && ! "$PY" -c "import SimpleITK" 2>/dev/null; then
    echo "gpu.sh: SimpleITK is not in $SITE: run 'benchmarks/gpu.sh sitk' (carry .whl-sitk) right before" | tee -a "$LOG"
    env_rc=3
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
fi
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" 2>&1 | tee -a "$LOG"
record env "$env_rc" 0 "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
if [ "$env_rc" != 0 ] || [ "$CMD" = sitk ]; then pack; exit "$env_rc"; fi
if [ "$CMD" = nnunet ] && [ ! -f "$DATA/dataset.json" ]; then
  echo "gpu.sh: no prepared data in $DATA: run benchmarks/gpu.sh fetch here and carry .gpu-data" | tee -a "$LOG"
  record data 2 0 0
  pack
  exit 2
fi

# ---------------------------------------------------------------------------------------------------- steps
R="$WORK/results"
if [ "$DRY" = 1 ]; then
  # the six-stage plan and the second compiled plan add minutes on 2 cores and no code path (tests build those networks)
  SPEED=(--device cpu --tiny --repeats 1 --steps 1)
  EAGER=(--plans hippocampus_3d_fullres,isic2017_2d)
  COMPILED=(--plans hippocampus_3d_fullres --compile-backend eager --no-profile)  # dynamo traces; inductor: GPU
  ATTENTION=(--device cpu --density-case 8 --backends dense,gather)
  MEMORY=(--device cpu --plans hippocampus_3d_fullres --networks stock,bsa --tiny)  # the code path, not figures
  TRAIN=(--device cpu --budget 1x2b2 --no-compile)
  PREDICT=(--device cpu --budget 1x2b2)
else
  SPEED=(--device cuda --repeats 3 --steps 3 --threads 16)
  EAGER=(--plans hippocampus_3d_fullres,isic2017_2d,six_stage_128_3d)
  COMPILED=(--plans hippocampus_3d_fullres,isic2017_2d)
  ATTENTION=(--device cuda --density-case 32 --threads 16)
  MEMORY=(--device cuda --plans hippocampus_3d_fullres,isic2017_2d)
  TRAIN=(--device cuda --budget 1x20)
  PREDICT=(--device cuda --budget 1x20)
fi
case "$CMD" in
  main)
    # shellcheck disable=SC2086  # the module lists split on whitespace
    step tests 70 "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml="$R/pytest-gpu.xml" $MAIN_TESTS
    step speed-eager 110 "$PY" -m benchmarks.network_speed "${SPEED[@]}" --mode eager "${EAGER[@]}" --inference \
      --out "$R/network-speed-$DEVICE-eager.json"
    step speed-compiled 110 "$PY" -m benchmarks.network_speed "${SPEED[@]}" --mode compiled "${COMPILED[@]}" \
      --out "$R/network-speed-$DEVICE-compiled.json"
    step attention 40 "$PY" -m benchmarks.attention "${ATTENTION[@]}" --out "$R/attention-$DEVICE.json"
    step memory 45 "$PY" -m benchmarks.training_memory "${MEMORY[@]}" --out "$R/training-memory-$DEVICE.json"
    ;;
  nnunet)
    # shellcheck disable=SC2086
    step tests-nnunet 40 "$PY" -m pytest -q -p no:cacheprovider -m gpu --junitxml="$R/pytest-gpu-nnunet.xml" \
      $NNUNET_TESTS
    step train 170 "$PY" -m benchmarks.gpu_nnunet train --data "$DATA" "${TRAIN[@]}" --out "$R/nnunet-train.json"
    step predict 60 "$PY" -m benchmarks.gpu_nnunet predict --data "$DATA" "${PREDICT[@]}" --out "$R/nnunet-predict.json"
    ;;
esac
pack
awk -F'\t' '$2 != 0 { bad = 1 } END { exit bad }' "$WORK/steps.tsv"
