#!/usr/bin/env bash
# The GPU acceptance run, for a machine with one CUDA GPU and fastvit installed
# (pip install -e ".[test]"):
#
#   benchmarks/gpu_acceptance.sh OUTDIR
#
#   1. the quick GPU tests:   FASTVIT_TEST_ON_GPU=1 pytest -m gpu_quick tests     -> OUTDIR/tests.{log,xml}
#   2. the profile report:    fastvit profile --device cuda --dtype bf16          -> OUTDIR/report/
#   3. the speed suite on ViT-B/16 shapes (attention and block, bf16, 224 and 1024 px, every
#      backend)                                                                   -> OUTDIR/bench.{json,log}
#   4. a one-screen summary (python -m fastvit.profiling.acceptance)             -> OUTDIR/summary.txt
#
# Exit status 0 only if every step passed; 2 (and nothing run) without a CUDA GPU. Aimed at
# under 8 minutes on one data-centre GPU; not yet measured on one: each step prints its time.
# BENCH_SELECT (a pytest -k expression) widens or narrows step 3.
set -uo pipefail

if [[ $# -ne 1 || -z "$1" ]]; then
    echo "usage: benchmarks/gpu_acceptance.sh OUTDIR" >&2
    exit 2
fi
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_acceptance.sh: needs a CUDA GPU (torch.cuda.is_available() is False here); nothing was run" >&2
    exit 2
fi

mkdir -p "$1" || exit 2
out="$(cd "$1" && pwd)"
cd "$(dirname "$0")/.." || exit 2
unset TRITON_INTERPRET  # the real compiler, not the CPU interpreter
bench_select="${BENCH_SELECT:-cuda-bf16 and (224px or 1024px)}"
start=$SECONDS

step() {  # step NAME LOGFILE COMMAND...: run it, log its output, print its time and status
    local name="$1" log="$2" t0=$SECONDS rc
    shift 2
    echo "[$name] $*" >&2
    "$@" >"$log" 2>&1
    rc=$?
    echo "[$name] exit $rc after $((SECONDS - t0)) s (log: $log)" >&2
    return $rc
}

step tests "$out/tests.log" env FASTVIT_TEST_ON_GPU=1 python -m pytest -q -p no:cacheprovider -m gpu_quick tests \
    --junitxml="$out/tests.xml"
tests_rc=$?
step profile "$out/profile.log" fastvit profile --device cuda --dtype bf16 --out "$out/report" --no-progress
profile_rc=$?
step bench "$out/bench.log" python -m pytest -q -p no:cacheprovider benchmarks/test_bench_attention.py \
    benchmarks/test_bench_block.py -k "$bench_select" --benchmark-max-time=0.5 --benchmark-json="$out/bench.json"
bench_rc=$?
echo "total $((SECONDS - start)) s" >&2

python -m fastvit.profiling.acceptance "$out" --step "tests=$tests_rc" --step "profile=$profile_rc" \
    --step "bench=$bench_rc" | tee "$out/summary.txt"
exit "${PIPESTATUS[0]}"
