#!/usr/bin/env bash
# The GPU check: what a session lent a GPU runs once (about 8 minutes on one H100/H200), writing
# bench/results/gpu-<date>.md. Every section is real work on the device: PGD-10 on a CIFAR-size
# ResNet-18 at batch 256 against ART, foolbox and torchattacks with achieved TFLOP/s against the
# measured matmul peak; the standard suite against the reference AutoAttack (pyautoattack); bf16
# autocast on and off and the automatic batch size; the batched hashes on CUDA, checked bit for
# bit against imagehash/pdqhash; one small scenario of each range end to end.
#
#   bash bench/gpu_check.sh              # on the GPU machine, from the repository root
#   bash bench/gpu_check.sh --dry-run    # CPU, tiny sizes: CI runs this so the script keeps working
#
# On a machine without the project's packages, carry wheels (bench/README.md, "GPU check") in
# .whl/; they are installed into /tmp/site first. A section that fails is recorded and the rest
# still run; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python3}
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then  # bench/gpu_wheels.sh made them
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
  for sdist in .whl/*.tar.gz; do
    [[ -e $sdist ]] && "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
      --no-cache-dir --target /tmp/site "$sdist"
  done
fi
export PYTHONUNBUFFERED=1
if [[ $DRY == 1 ]]; then
  DEV=cpu
  RESULT=${GPU_CHECK_OUT:-$(mktemp -d)}/gpu-check-dry-run.md
  PGD="--device cpu --model resnet20 --batch-sizes 4 --repeats 1 --steps 2"
  SUITE="--device cpu --dry-run"
  HASH="--device cpu --batch 8 --size 64 --repeats 1"
else
  DEV=cuda
  mkdir -p bench/results
  RESULT=bench/results/gpu-$(date -u +%F).md
  PGD="--device cuda --model resnet18 --channels 3 --batch-sizes 256 --repeats 5"
  SUITE="--device cuda --n 500"
  HASH="--device cuda --batch 256 --repeats 5"
fi
failed=0
section() {  # title, time limit (s), command
  local title=$1 limit=$2; shift 2
  echo "== $title"
  { echo; echo "## $title"; echo; echo '```'; echo "\$ $*"; } >>"$RESULT"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$RESULT"
  local rc=${PIPESTATUS[0]}
  echo "(exit $rc, $((SECONDS - t0)) s)" | tee -a "$RESULT"
  echo '```' >>"$RESULT"
  [[ $rc == 0 ]] || failed=$((failed + 1))
}
{ echo "# GPU check $(date -u +%FT%TZ)$([[ $DRY == 1 ]] && echo ' (dry run: CPU, tiny sizes)')"
  echo; echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"; } >"$RESULT"
section "Device and versions" 120 "$PY" -c "
import torch, platform
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')
assert torch.cuda.is_available() or '$DEV' == 'cpu', 'no CUDA device'"
section "PGD-10 vs ART, foolbox, torchattacks (TFLOP/s vs matmul peak)" 150 \
  "$PY" bench/pgd_speed.py $PGD
section "Standard suite vs pyautoattack and torchattacks (L-inf 8/255)" 240 \
  "$PY" bench/suite_vs_autoattack.py $SUITE
section "Batched hashes vs imagehash/pdqhash (bit-exact)" 90 "$PY" bench/hash_speed.py $HASH
section "Each range end to end; bf16 autocast and automatic batch size" 240 \
  "$PY" bench/gpu_scenarios.py --device "$DEV" $([[ $DRY == 1 ]] && echo --dry-run)
echo "results: $RESULT ($failed section(s) failed)"
[[ $failed == 0 ]]
