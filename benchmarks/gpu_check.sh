#!/usr/bin/env bash
# Issue 21's one device check: the CUDA tests, word2vec on the GPU against the CPU, and the exchange on CUDA tensors,
# in one run of a few minutes, then a short table. Two steps:
#
#   bash benchmarks/gpu_check.sh prepare    # here, beside ../shared: fills .gpu/ (ignored by git) with the corpus and
#                                           # the evaluation files, which the device machine cannot fetch
#   bash benchmarks/gpu_check.sh run [DIR]  # on the GPU machine, from the repository root, .gpu/ carried along;
#                                           # logs and JSON go to DIR (default $OUT, else /tmp/gpu_check)
#
# The device image has torch with CUDA, Triton, numba, pytest and hypothesis: the package runs from src/ as it is
# (PYTHONPATH), nothing is installed. Each step has its own time limit, so one that hangs cannot eat the others; all
# of them together stay under the device tool's 10 minutes a command (the benchmark writes its JSON after every run).
# GPU_CHECK_CORPUS replaces the corpus (a tiny one checks this script through Triton's interpreter, no GPU).
set -uo pipefail
cd "$(dirname "$0")/.."
step=${1:-run}

if [ "$step" = prepare ]; then
    mkdir -p .gpu
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    cp ../shared/data/wiki17m.txt.xz .gpu/
    data=$(.venv/bin/python -c "from gensim.test.utils import datapath; print(datapath(''))")
    for f in questions-words.txt wordsim353.tsv simlex999.txt; do cp "$data/$f" .gpu/; done
    du -sh .gpu
    exit 0
fi

out=${2:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $py -c "import torch, triton, numba; print('torch', torch.__version__, '| triton', triton.__version__, \
'| numba', numba.__version__, '| cuda', torch.cuda.is_available())"
} 2>&1 | tee "$out/device.txt"

echo "== tests (CUDA)"
timeout 150 $py -m pytest -q -p no:cacheprovider -o addopts="" -rs tests/test_gpu.py tests/test_cuda_exchange.py \
    2>&1 | tee "$out/tests.log" | tail -15

echo "== word2vec on the GPU against the CPU"
timeout 300 $py benchmarks/bench_gpu.py --corpus "${GPU_CHECK_CORPUS:-.gpu/wiki17m.txt.xz}" --eval-dir .gpu \
    --json "$out/gpu_word2vec.json" 2>&1 | tee "$out/bench_gpu.log" | grep -v '^  sweep' | tail -12

echo "== exchange on CUDA tensors (200000 x 128, 8192 Zipf ids)"
timeout 60 $py benchmarks/bench_exchange.py --device cuda --backend nccl --nproc 1 --rows 200000 --dim 128 \
    --ids 8192 --steps 40 --json 2>&1 | tee "$out/exchange_nccl.log" | tail -8
timeout 70 $py benchmarks/bench_exchange.py --device cuda --backend gloo --nproc 2 --rows 200000 --dim 128 \
    --ids 8192 --steps 40 --json 2>&1 | tee "$out/exchange_gloo.log" | tail -8
