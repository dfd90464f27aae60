#!/usr/bin/env bash
# Benchmark: `harness eval --task mr --model smollm2 --limit N` against a Python
# pipeline doing the same work (transformers hidden states, the same pooling,
# scikit-learn StandardScaler + LogisticRegression, 5-fold CV with inner C selection
# at every layer, on the same subset and the same folds).
#
# Usage: PYTHON=/path/to/venv/python scripts/bench/eval.sh [LIMIT] [RUNS]
# Prints whole-process wall time and peak RSS per run for both, and the per-layer
# accuracy difference.
set -euo pipefail
cd "$(dirname "$0")/../.."
limit=${1:-2000}
runs=${2:-2}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

scripts/fetch_assets.py --only smollm2,mr >/dev/null
cargo build --release --quiet
export RAYON_NUM_THREADS=2 MATMUL_NUM_THREADS=2
stat() { awk '/Elapsed \(wall/ {print "wall", $NF} /Maximum resident/ {print "peak RSS", $NF, "KB"}' "$1" | paste -sd' '; }
for i in $(seq "$runs"); do
  /usr/bin/time -v target/release/harness eval --quiet --no-cache --task mr --model smollm2 \
    --limit "$limit" --out "$work/results" >/dev/null 2>"$work/h.log"
  echo "harness run $i: $(stat "$work/h.log")"
  /usr/bin/time -v "$python" scripts/bench/eval_reference.py --limit "$limit" --out "$work/ref.json" \
    2>"$work/r.log" >/dev/null
  echo "python run $i: $(stat "$work/r.log"); $(python3 -c "import json;d=json.load(open('$work/ref.json'));print(f\"forward {d['forward_s']:.1f}s probes {d['probe_s']:.1f}s\")")"
done
python3 - "$work/results/smollm2/mr.json" "$work/ref.json" <<'PY'
import json, sys
ours = [l["score"] for l in json.load(open(sys.argv[1]))["layers"]]
ref = json.load(open(sys.argv[2]))["accuracy"]
diff = [abs(a - b) for a, b in zip(ours, ref)]
print("layer  harness  python")
for l, (a, b) in enumerate(zip(ours, ref)):
    print(f"{l:5d}  {a:.4f}   {b:.4f}")
print(f"largest per-layer accuracy difference: {max(diff) * 100:.2f} points (layer {diff.index(max(diff))})")
PY
