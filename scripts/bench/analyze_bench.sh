#!/usr/bin/env bash
# Times `harness analyze` against the Python reference (scripts/reference/analyze_reference.py)
# doing the same diagnostics on the same prompts: the default 64 Austen paragraphs cut to 128
# tokens, two threads each (harness: rayon and matrixmultiply; Python: torch, with numpy's
# OpenBLAS on one thread, its fastest setting here). Runs alternate between the two sides so
# that load on a shared machine hits both alike; medians are reported.
#
# Usage: scripts/bench/analyze_bench.sh [model=smollm2] [runs=3]
# Environment: HARNESS_BIN (default target/release/harness, built first),
#              REF_PYTHON (default /work/venv/ref/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:-smollm2}
runs=${2:-3}
if [[ -z "${HARNESS_BIN:-}" ]]; then
    cargo build --release --quiet
    HARNESS_BIN=${CARGO_TARGET_DIR:-target}/release/harness
fi
python=${REF_PYTHON:-/work/venv/ref/bin/python}
export RAYON_NUM_THREADS=2 MATMUL_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for i in $(seq 1 "$runs"); do
    /usr/bin/time -f "%e %M" -o "$work/rust.$i" \
        "$HARNESS_BIN" analyze --model "$model" --limit 64 --max-tokens 128 --out "$work/rust" --quiet >/dev/null
    cp "$work/rust/$model/analyze.json" "$work/rust.$i.json"
    /usr/bin/time -f "%e %M" -o "$work/py.$i" \
        "$python" scripts/reference/analyze_reference.py --model "$model" --limit 64 --max-tokens 128 \
        --threads 2 --out "$work/py.$i.json" 2>/dev/null
    echo "run $i: harness $(cat "$work/rust.$i") / python $(cat "$work/py.$i") (seconds, peak KiB)" >&2
done

python3 - "$work" "$runs" "$model" <<'PY'
import json, statistics, sys
work, runs, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def side(name, analysis_seconds):
    wall, rss, analysis = [], [], []
    for i in range(1, runs + 1):
        w, m = open(f"{work}/{name}.{i}").read().split()
        wall.append(float(w))
        rss.append(int(m) / 1024)
        analysis.append(analysis_seconds(json.load(open(f"{work}/{name}.{i}.json"))))
    return wall, rss, analysis
rust = side("rust", lambda r: r["settings"]["seconds"])
py = side("py", lambda r: r["analysis_seconds"])
print(f"model {model}, 64 prompts x 128 tokens, {runs} alternating runs each; medians (all runs)")
print(f"{'':8} {'wall s':>8} {'after load s':>13} {'peak RSS MiB':>13}")
for name, (wall, rss, an) in (("harness", rust), ("python", py)):
    runs_txt = ", ".join(f"{w:.1f}" for w in wall)
    print(f"{name:8} {statistics.median(wall):8.1f} {statistics.median(an):13.1f} {statistics.median(rss):13.0f}   wall: {runs_txt}")
print(f"speed-up: {statistics.median(py[0]) / statistics.median(rust[0]):.1f}x wall, "
      f"{statistics.median(py[2]) / statistics.median(rust[2]):.1f}x after loading; "
      f"memory: {statistics.median(py[1]) / statistics.median(rust[1]):.1f}x less")
r = json.load(open(f"{work}/rust.1.json"))["layers"]
p = json.load(open(f"{work}/py.1.json"))["layers"]
worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-6)
            for a, b in zip(r, p) for k in a if k != "layer" and not k.endswith("_std") and b[k] is not None)
print(f"agreement: largest relative difference of a layer mean, over all metrics: {worst:.1e}")
PY
