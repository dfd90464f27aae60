#!/usr/bin/env bash
# Benchmark: `harness embed` against Python transformers on 512 movie-review sentences,
# SmolLM2-135M, every layer, mean pooling, 2 threads on both sides.
#
# Usage: scripts/bench/embed.sh [RUNS] [DTYPE]   (needs the reference venv: PYTHON=/path/to/python)
# DTYPE is f32 (default: transformers with eager attention) or bf16 (transformers with
# SDPA, what transformers v5 picks for a bf16 model). Prints the matrix kernels harness
# chose, per-run wall time, tokens/s and peak RSS for both, and checks that both
# produced the same vectors (f32: within 1e-4; bf16: harness no further from the f32
# vectors than transformers is).
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
dtype=${2:-f32}
case "$dtype" in
  f32 | bf16) ;;
  *) echo "embed.sh: DTYPE must be f32 or bf16, not '$dtype'" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
home=${HARNESS_HOME:-$HOME/.cache/harness}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

scripts/fetch_assets.py --only smollm2,mr >/dev/null
cargo build --release --quiet
# Every 20th sentence of the MR data: 512 real sentences of varied length.
python3 - "$home/data/mr/train.jsonl" "$work/texts.txt" <<'PY'
import json, sys
rows = [json.loads(l)["text"] for l in open(sys.argv[1], encoding="utf-8")]
open(sys.argv[2], "w", encoding="utf-8").write("\n".join(rows[::20][:512]) + "\n")
PY

target/release/harness inspect --model smollm2 | grep matrix_kernels
export OMP_NUM_THREADS=2 RAYON_NUM_THREADS=2 MATMUL_NUM_THREADS=2
peak_rss() { grep "Maximum resident" "$1" | awk '{print $NF}'; }
for i in $(seq "$runs"); do
  /usr/bin/time -v target/release/harness embed --quiet --model smollm2 --input "$work/texts.txt" \
    --pool mean --dtype "$dtype" --out "$work/harness.safetensors" 2>"$work/h.log"
  h_line=$(grep "^embedded" "$work/h.log")
  echo "harness run $i: $h_line; peak RSS $(peak_rss "$work/h.log") KB"
  /usr/bin/time -v "$python" scripts/bench/embed_reference.py --input "$work/texts.txt" \
    --out "$work/reference.safetensors" --threads 2 --dtype "$dtype" >"$work/r.json" 2>"$work/r.log"
  echo "transformers run $i: $(cat "$work/r.json"); peak RSS $(peak_rss "$work/r.log") KB"
done

if [[ $dtype == f32 ]]; then
  "$python" - "$work/harness.safetensors" "$work/reference.safetensors" 1e-4 <<'PY'
import sys
from safetensors.numpy import load_file
a = load_file(sys.argv[1])["embeddings"]; b = load_file(sys.argv[2])["embeddings"]
assert a.shape == b.shape, (a.shape, b.shape)
import numpy as np
err = np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-12)
print(f"same vectors: shape {a.shape}, worst relative error per (text, layer) {err.max():.2e}")
assert err.max() < float(sys.argv[3]), f"worse than {sys.argv[3]}"
PY
else
  # Two bf16 runs differ from each other by both their roundings, so each is compared
  # with the f32 vectors (harness f32, equal to transformers f32 within 1e-4): harness
  # bf16 must be no further from them than transformers bf16 is.
  target/release/harness embed --quiet --model smollm2 --input "$work/texts.txt" \
    --pool mean --dtype f32 --out "$work/f32.safetensors"
  "$python" - "$work/harness.safetensors" "$work/reference.safetensors" "$work/f32.safetensors" <<'PY'
import sys
import numpy as np
from safetensors.numpy import load_file
h, r, f = (load_file(p)["embeddings"] for p in sys.argv[1:4])
assert h.shape == r.shape == f.shape, (h.shape, r.shape, f.shape)
def err(a, b):
    return np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-12)
eh, er, ehr = err(h, f), err(r, f), err(h, r)
for name, e in [("harness bf16", eh), ("transformers bf16", er)]:
    print(f"{name} against f32: worst per (text, layer) {e.max():.2e} (layer "
          f"{np.unravel_index(e.argmax(), e.shape)[1]}), mean {e.mean():.2e}")
print(f"harness bf16 against transformers bf16: worst {ehr.max():.2e}, mean {ehr.mean():.2e}")
assert eh.max() <= er.max() and eh.mean() <= 1.1 * er.mean(), "harness bf16 is further from f32"
PY
fi
