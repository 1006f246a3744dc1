#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh on the lent GPU machine, which has Python 3.12 with torch and
# torchvision but none of the project's other packages and no network. Run here, from the
# repository root; the device tool then carries .whl/ (git-ignored locally) and gpu_check.sh
# installs it into /tmp/site. torch there is its own build: arange's pin is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PY=${PYTHON:-python3}
for spec in "adversarial-robustness-toolbox>=1.17" "foolbox>=3.3" eagerpy imagehash PyWavelets \
    "pydantic>=2.5" pydantic-core annotated-types typing-inspection \
    "torchattacks<3.4" "pyautoattack>=0.2" multiprocess dill "onnx2torch>=1.5"; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d .whl "$spec"
done
# pdqhash ships as source only: gpu_check.sh builds it there (Cython and a C++ compiler are in
# that image).
"$PY" -m pip download -q --no-deps -d .whl "pdqhash>=0.2.8"
du -sh .whl
