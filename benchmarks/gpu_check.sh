#!/usr/bin/env bash
# GPU check: the `gpu` test suite, then a small CUDA benchmark table. Installs nothing from the
# network; runs from the source tree (PYTHONPATH=.). Finishes in under 5 minutes on one GPU.
#
#   benchmarks/gpu_check.sh            # python3 from PATH
#   PYTHON=/opt/py/bin/python benchmarks/gpu_check.sh
#
# Missing pure-Python dependencies of `bench` can be supplied as local wheels in
# $COSTMETER_WHEELS (default benchmarks/wheels); they are installed into a temporary folder with
# `pip --no-index`. Exit status: 0 when both parts passed, 1 otherwise.
set -u -o pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export COSTMETER_HOME="${COSTMETER_HOME:-$(mktemp -d -t costmeter-gpu-check-XXXXXX)}"
WHEELS="${COSTMETER_WHEELS:-benchmarks/wheels}"
START=$(date +%s)
STATUS=0

echo "== machine"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,power.limit,temperature.gpu \
    --format=csv || true
else
  echo "nvidia-smi not found"
fi
"$PY" - <<'PY'
import platform
print("python", platform.python_version())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())
except ImportError as exc:
    print("torch missing:", exc)
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, "providers", ort.get_available_providers())
except ImportError as exc:
    print("onnxruntime missing:", exc)
try:
    import pynvml
    print("nvidia-ml-py present")
except ImportError as exc:
    print("pynvml missing:", exc)
PY

echo "== dependencies of bench"
MISSING=$("$PY" - <<'PY'
import importlib.util
mods = {"click": "click", "rich": "rich", "sqlalchemy": "SQLAlchemy", "psutil": "psutil", "scipy": "scipy",
        "numpy": "numpy", "pandas": "pandas", "cpuinfo": "py-cpuinfo", "onnx": "onnx"}
print(" ".join(dist for mod, dist in mods.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$MISSING" ]; then
  echo "missing: $MISSING"
  if [ -d "$WHEELS" ]; then
    DEPS=$(mktemp -d -t costmeter-deps-XXXXXX)
    # shellcheck disable=SC2086
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" --target "$DEPS" $MISSING \
      && export PYTHONPATH="$PYTHONPATH:$DEPS" && echo "installed from $WHEELS"
  else
    echo "no local wheels in $WHEELS; bench may fail to start"
  fi
else
  echo "all present"
fi

echo "== gpu tests"
timeout 170 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors tests
rc=$?
echo "gpu tests exit code: $rc"
[ "$rc" -eq 0 ] || STATUS=1

echo "== bench run"
RUNTIMES=$("$PY" - <<'PY'
try:
    import onnxruntime as ort
    ok = "CUDAExecutionProvider" in ort.get_available_providers()
except ImportError:
    ok = False
print("torch,onnxruntime" if ok else "torch")
PY
)
if [ "$RUNTIMES" = "torch" ]; then
  echo "note: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu); measuring torch only"
fi
timeout 240 "$PY" -c 'import sys; from costmeter.cli import main; sys.exit(main(sys.argv[1:]))' run \
  --device cuda --runtime "$RUNTIMES" --model resnet50,mobilenet_v2 --batch 1,32 \
  --warmup-time 0.3 --min-time 1 --max-time 8 --timeout 120
rc=$?
echo "bench run exit code: $rc"
[ "$rc" -eq 0 ] || STATUS=1

echo "== done in $(( $(date +%s) - START )) s (results store: $COSTMETER_HOME)"
exit "$STATUS"
