#!/usr/bin/env bash
# The one prepared check to run on a GPU machine (issue 11): a small forward pass against
# the CPU, the eight golden model cases on the GPU (f32 and bf16), `eval --task mr` on the
# GPU in bf16 inside the CPU f32 run's 95% intervals, and the throughput benchmark of
# scripts/bench/throughput.py on the three real shapes side by side with transformers.
# Prints a summary and writes every figure under OUT (default target/gpu-check-out/).
#
#   scripts/gpu_check.sh --pack          # here (no GPU needed): build the CUDA binaries
#                                        # (scripts/build_cuda.sh) and the mr data into
#                                        # target/gpu-check/, ~48 MB to carry
#   scripts/gpu_check.sh [OUT]           # on the GPU machine, from the repository root,
#                                        # with target/gpu-check/ carried along
#   DEVICE=cpu scripts/gpu_check.sh --small [OUT]   # every step on the CPU at toy sizes
#                                        # with the CPU build (cargo), to test this script
#
# The GPU machine needs no Rust and no internet: its Python (torch + transformers) writes
# the random-weight models (scripts/reference/random_model.py) and runs transformers, and
# its nvidia wheels' CUDA 13 libraries serve the binaries. Planned to fit 8 minutes there
# (not yet run on a GPU): most of it the Llama-3.1-8B shape (16 GB of weights drawn on the
# GPU and written, then loaded by each side) and the CPU f32 mr run (2,000 sentences of
# ~80 tokens with the random models' byte-level tokenizer, on the machine's cores, while
# the GPU run goes). SHAPES, SEQUENCES and LIMIT cut it down.
# A wrong small forward pass stops the run; after it every step runs even when an earlier
# one fails, and the exit status is 1 if any failed.
#
# OUT gets only figures and logs (it is what comes back from a GPU machine); the unpacked
# binaries and the generated models (19 GB with the 8B shape) go to SCRATCH (default
# $TMPDIR/harness-gpu-check), removed at the end unless KEEP=1.
#
# Environment: PYTHON (python3), DEVICE (cuda), SHAPES (smollm2-135m,pythia-1.4b,llama-3.1-8b),
# SEQUENCES (4096), LIMIT (mr texts, 2000), EVAL_MODEL (a --model for the mr runs; default the
# random SmolLM2-135M-shape model), BENCH_ARGS (more throughput.py arguments, e.g.
# "--max-batch-tokens 32768").
set -uo pipefail
cd "$(dirname "$0")/.."
bundle=target/gpu-check

if [[ ${1:-} == --pack ]]; then
  set -e
  scripts/build_cuda.sh --bundle "$bundle" >/dev/null
  mr=${HARNESS_HOME:-$HOME/.cache/harness}/data/mr
  if [[ ! -f $mr/train.jsonl ]]; then
    echo "error: $mr/train.jsonl is missing: run scripts/fetch_assets.py" >&2
    exit 1
  fi
  mkdir -p "$bundle/home/data"
  cp -r "$mr" "$bundle/home/data/"
  echo "$bundle: $(du -sh "$bundle" | cut -f1); carry it to the GPU machine and run scripts/gpu_check.sh there"
  exit 0
fi

small=0
if [[ ${1:-} == --small ]]; then
  small=1
  shift
fi
out=${1:-target/gpu-check-out}
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
if [[ $small == 1 ]]; then
  shapes=${SHAPES:-smollm2-135m}
  sequences=${SEQUENCES:-128}
  limit=${LIMIT:-200}
else
  shapes=${SHAPES:-smollm2-135m,pythia-1.4b,llama-3.1-8b}
  sequences=${SEQUENCES:-4096}
  limit=${LIMIT:-2000}
fi
scratch=${SCRATCH:-${TMPDIR:-/tmp}/harness-gpu-check}
mkdir -p "$out" "$scratch/bin" "$scratch/models"
out=$(cd "$out" && pwd)
if [[ ${KEEP:-0} != 1 ]]; then
  trap 'rm -rf "$scratch"' EXIT
fi
log=$out/gpu_check.log
: >"$log"
say() { echo "$*" | tee -a "$log"; }
failed=()
step() { # step NAME COMMAND...: runs, times and records one step
  local name=$1 start=$SECONDS
  shift
  say "== $name"
  if "$@" >>"$log" 2>&1; then
    say "   ok ($((SECONDS - start)) s)"
  else
    say "   FAILED ($((SECONDS - start)) s; see $log)"
    failed+=("$name")
  fi
}

# The binaries: in CPU mode the CPU build of this checkout, otherwise the carried CUDA bundle.
bin=$scratch/bin
if [[ $device == cpu ]]; then
  cargo build --release --quiet --example throughput || exit 1
  cp target/release/harness target/release/examples/throughput "$bin/"
  golden=$(cargo test --release --test golden --no-run --message-format=json 2>/dev/null |
    "$python" -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "golden"][-1])')
  cp "$golden" "$bin/golden"
elif [[ -f $bundle/harness.gz ]]; then
  for b in harness throughput golden; do
    gunzip -c "$bundle/$b.gz" >"$bin/$b" && chmod +x "$bin/$b"
  done
  export HARNESS_HOME=$PWD/$bundle/home
else
  echo "error: $bundle/harness.gz is missing: run scripts/gpu_check.sh --pack on the build machine and carry $bundle" >&2
  exit 1
fi

if [[ $device == cuda* ]]; then
  cuda_lib=$("$python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))') || exit 1
  if [[ ! -d $cuda_lib ]]; then
    echo "error: no CUDA 13 libraries at $cuda_lib (this Python's nvidia wheels)" >&2
    exit 1
  fi
  export LD_LIBRARY_PATH=$cuda_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
fi
if ! versions=$("$python" -c 'import torch, transformers, safetensors; print("torch", torch.__version__, "transformers", transformers.__version__)'); then
  echo "error: $python lacks torch, transformers or safetensors: set PYTHON" >&2
  exit 1
fi
say "device $device; CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $versions"

# 1. A small forward pass (tiny Llama, f32, every layer mean-pooled) on the device against
# the CPU, before anything is timed.
forward_check() {
  local ids=$scratch/tiny-ids.json
  echo '[[1, 17, 93, 200, 5, 44, 301], [1, 250, 12]]' >"$ids"
  for d in cpu "$device"; do
    "$bin/throughput" --model tests/fixtures/tiny-llama --ids "$ids" --passes 1 --out-rows 2 \
      --out "$scratch/tiny-$d.safetensors" --device "$d" || return 1
  done
  "$python" - "$scratch/tiny-cpu.safetensors" "$scratch/tiny-$device.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file
a, b = (load_file(f)["pooled"] for f in sys.argv[1:3])
worst = ((a - b).norm(dim=-1) / a.norm(dim=-1).clamp_min(1e-12)).max().item()
print(f"tiny-llama f32, every layer pooled, device against CPU: worst relative error {worst:.2e} (allowed 1e-4)")
sys.exit(0 if worst <= 1e-4 else 1)
EOF
}
step "forward pass on $device against the CPU" forward_check
if [[ ${#failed[@]} -gt 0 ]]; then
  say "FAILED: nothing else is worth running (or timing) when a small forward pass is wrong"
  exit 1
fi

# 2. The golden cases: the test binary of tests/golden.rs, run on the device. The tiny_ tests
# are the eight models (six safetensors architectures, two GGUF files) in f32 and bf16, and
# the bf16 wrong-layer control; the two real GGUF models are not carried (~340 MB).
goldens() {
  CARGO_MANIFEST_DIR=$PWD HARNESS_TEST_DEVICE=$device "$bin/golden" tiny_ --test-threads 1 2>&1 |
    tee "$out/golden.log" | grep -E '^(test |test result)'
}
step "golden cases on $device (f32 within 1e-4, bf16 within 5e-2)" goldens

# 3. mr on the device in bf16 against the CPU in f32 (both at once: the CPU run is on the cores).
eval_model=${EVAL_MODEL:-$scratch/models/smollm2-135m}
mr_check() {
  if [[ -z ${EVAL_MODEL:-} && ! -f $eval_model/model.safetensors ]]; then
    "$python" scripts/reference/random_model.py smollm2-135m "$eval_model" || return 1
  fi
  "$bin/harness" eval --task mr --limit "$limit" --model "$eval_model" --dtype f32 --device cpu \
    --no-cache --quiet --out "$out/mr-cpu-f32" &
  local cpu=$!
  "$bin/harness" eval --task mr --limit "$limit" --model "$eval_model" --dtype bf16 --device "$device" \
    --no-cache --quiet --out "$out/mr-$device-bf16"
  local dev=$?
  wait $cpu || return 1
  [[ $dev == 0 ]] || return 1
  "$python" - "$out/mr-cpu-f32" "$out/mr-$device-bf16" <<'EOF'
import glob, json, sys
cpu, dev = (json.load(open(glob.glob(f"{d}/*/*.json")[0])) for d in sys.argv[1:3])
outside = []
for c, g in zip(cpu["layers"], dev["layers"]):
    inside = c["ci_low"] <= g["score"] <= c["ci_high"]
    print(f"layer {c['layer']:2}: CPU f32 {c['score']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]  device bf16 {g['score']:.3f}{'' if inside else '  OUTSIDE'}")
    if not inside:
        outside.append(c["layer"])
print(f"{len(cpu['layers']) - len(outside)} of {len(cpu['layers'])} layers inside the CPU f32 run's 95% interval")
sys.exit(1 if outside or len(cpu["layers"]) != len(dev["layers"]) else 0)
EOF
}
step "mr (limit $limit) on $device bf16 inside the CPU f32 intervals" mr_check

# 4. The benchmark, side by side with transformers.
bench() {
  rm -f "$out/bench.jsonl"
  # shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
  "$python" scripts/bench/throughput.py --shapes "$shapes" --sequences "$sequences" --dtype bf16 \
    --device "$device" --models "$scratch/models" --example "$bin/throughput" --out "$out/bench.jsonl" \
    ${BENCH_ARGS:-} | tee "$out/bench.txt"
}
step "throughput, $shapes, $sequences sequences, bf16" bench

say "== summary"
grep -E '^test result' "$out/golden.log" 2>/dev/null | tee -a "$log"
grep -E 'layers inside' "$log" | tee -a "$out/summary.txt"
cat "$out/bench.txt" 2>/dev/null | tee -a "$out/summary.txt"
if [[ ${#failed[@]} -gt 0 ]]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "all steps passed; figures in $out (bench.jsonl, mr-*/, golden.log, gpu_check.log)"
