#!/usr/bin/env bash
# GPU check of the fast training path (issue #7), for a machine with one GPU and no network.
#
#   benchmarks/gpu_check.sh OUTDIR          (PYTHON=/path/to/python to choose the interpreter)
#
# Runs from a checkout without installing it (PYTHONPATH), needs torch, numpy and Pillow (matplotlib only for
# the figures, pytest only for the CUDA unit tests), and stops every step at an overall deadline of 290 s:
#   1. environment:  OUTDIR/environment.txt (nvidia-smi, versions, import check)
#   2. speed:        benchmarks/bench.py speed -> OUTDIR/bench.json, OUTDIR/bench.log, OUTDIR/bench.png
#   3. parity:       Base and ABD, 2 tasks x 6 epochs on generated CIFAR-100-layout data, eager fp32 against
#                    graphs-only fp32 and the full fast path -> OUTDIR/parity.json, parity_losses.png,
#                    parity_accuracy.png, parity.log
#   4. unit tests:   the CUDA-only tests of tests/test_fast_path.py -> OUTDIR/pytest.log
# OUTDIR/summary.txt collects the key numbers and any step that failed; the script exits non-zero and its last
# line says FAILED when a step failed, including a parity run outside its tolerances (the parity step exits 1).
# BENCH_ARGS / PARITY_ARGS are appended to the two commands (e.g. a CPU dry run of this script:
#   BENCH_ARGS="--quick --device cpu --threads 1 --workloads base"
#   PARITY_ARGS="--device cpu --threads 1 --methods base --epochs 1 --per-class 13").
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MPLBACKEND=Agg
PY=${PYTHON:-python3}
DEADLINE=$((SECONDS + 290))
FAILED=0
: > "$OUT/summary.txt"

# step NAME MAX_SECONDS COMMAND...: run with a time limit (and no later than the deadline), log to OUT/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -lt 10 ]; then
        echo "!! $name skipped: the 290 s deadline is reached" | tee -a "$OUT/summary.txt"
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "!! $name FAILED: exited with status $rc (124: timed out); see $name.log" | tee -a "$OUT/summary.txt"
        FAILED=1
    fi
}

{
    date -u
    nvidia-smi || echo "nvidia-smi not available"
    "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
print("GPU:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible")
import numpy, PIL
import dfcil_core.learners
print("imports ok; learners:", sorted(dfcil_core.learners.LEARNERS))
EOF
    "$PY" benchmarks/bench.py --help > /dev/null && echo "benchmarks/bench.py imports ok"
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

step bench 120 "$PY" benchmarks/bench.py speed --out "$OUT/bench.json" ${BENCH_ARGS:-}
step bench_figure 30 "$PY" benchmarks/bench.py figures "$OUT"
step parity 120 "$PY" benchmarks/bench.py parity --out-dir "$OUT" ${PARITY_ARGS:-}
if "$PY" -c "import pytest" 2>/dev/null; then
    step pytest 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast_path.py -k cuda
else
    echo "pytest is not installed: the CUDA unit tests were not run" | tee -a "$OUT/summary.txt"
fi

"$PY" - "$OUT" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
if (out / "bench.json").exists():
    b = json.loads((out / "bench.json").read_text())
    print(f"bench on {b['gpu'] or 'CPU'} (torch {b['torch']}, CUDA {b['cuda']}, batch {b['batch_size']}):")
    for name, e in b["results"].items():
        f = e["fast"]
        print(f"  {name:9s} eager fp32 {e['eager_fp32']['ms_per_step']:7.2f} ms {e['eager_fp32']['per_second']:9.0f} "
              f"{e['unit']} | fast {f['ms_per_step']:7.2f} ms {f['per_second']:9.0f} {e['unit']}"
              f"{'' if f['graphed'] or not f['switches']['cuda_graphs'] else ' (NOT graphed: fell back)'}"
              f" | x{e['speedup']:.2f}")
if (out / "parity.json").exists():
    p = json.loads((out / "parity.json").read_text())
    for key, run in p["runs"].items():
        print(f"  parity {key:22s} accuracy {['%.2f' % a for a in run['accuracy_seen']]} "
              f"main-stage img/s {['%.0f' % v for v in run['images_per_second']]}")
    for key, c in p["comparisons"].items():
        print(f"  parity {key:22s} max accuracy diff {c['max_accuracy_diff_points']:.2f} points, max epoch-loss "
              f"diff {100 * c['max_loss_relative_diff']:.1f}% -> {'OK' if c['within_tolerance'] else 'FAILED: OUTSIDE TOLERANCE'}")
EOF
if [ "$FAILED" -ne 0 ]; then
    echo "gpu_check FAILED (see the !! lines above) in ${SECONDS}s; outputs in $OUT" | tee -a "$OUT/summary.txt"
else
    echo "gpu_check passed in ${SECONDS}s; outputs in $OUT" | tee -a "$OUT/summary.txt"
fi
exit $FAILED
