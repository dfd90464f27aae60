#!/usr/bin/env bash
# Builds the CUDA binary of harness (`--features cuda`) on a machine with neither a GPU nor
# a CUDA installation: CUDA 13.0 comes from PyPI's wheels in a virtual environment outside
# the repository, the wheels' versioned libraries get the unversioned names the linker
# wants, and libcuda.so.1 (which only a driver installs) is replaced at link time by a stub
# exporting every driver symbol cudarc declares; the real library is found at run time on
# the GPU machine. Prints the binary's path; a gzipped copy sits beside it for carrying.
#
#   scripts/build_cuda.sh            # Hopper (compute capability 90)
#   CUDA_COMPUTE_CAP=80 scripts/build_cuda.sh
#   scripts/build_cuda.sh --bundle DIR
#
# --bundle also builds what scripts/gpu_check.sh runs besides the binary (the throughput
# example and the golden test binary, which the GPU machine cannot build for lack of
# cargo) and puts stripped, gzipped copies of all three in DIR (about 16 MB each: the line
# tables the release profile keeps would triple that); the library is already built by
# then, so this adds a minute or two.
#
# HARNESS_CUDA_VENV and HARNESS_CUDA_TARGET choose where the toolkit and the build go
# (default under ~/.cache/harness). The first build takes ~12 min on 2 cores: candle
# compiles its CUDA kernels; rebuilding after a change relinks in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle=
if [[ ${1:-} == --bundle ]]; then
  bundle=${2:?--bundle needs a directory}
  mkdir -p "$bundle"
  bundle=$(cd "$bundle" && pwd)
elif [[ $# -gt 0 ]]; then
  echo "error: unknown argument '$1' (expected --bundle DIR)" >&2
  exit 1
fi

venv=${HARNESS_CUDA_VENV:-$HOME/.cache/harness/cuda-venv}
target=${HARNESS_CUDA_TARGET:-$HOME/.cache/harness/cuda-target}
cap=${CUDA_COMPUTE_CAP:-90}
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  nvidia-cuda-nvrtc==13.0.88 nvidia-nvvm==13.0.88
)

if [[ ! -x $venv/bin/python ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "${wheels[@]}"
cuda=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
if [[ ! -x $cuda/bin/nvcc ]]; then
  echo "error: no nvcc under $cuda after installing the CUDA wheels" >&2
  exit 1
fi

# The wheels ship libfoo.so.N only; -lfoo needs libfoo.so.
for lib in cudart cublas cublasLt nvrtc curand; do
  versioned=$(find "$cuda/lib" -maxdepth 1 -name "lib$lib.so.[0-9]*" ! -name '*alt*' | sort | head -n 1)
  if [[ -z $versioned ]]; then
    echo "error: lib$lib.so.* is missing from $cuda/lib" >&2
    exit 1
  fi
  ln -sfn "$(basename "$versioned")" "$cuda/lib/lib$lib.so"
done

# The driver stub: one empty function per `cu*` symbol of the cudarc the lock file pins,
# read from its source in cargo's registry.
cargo fetch --locked >/dev/null
cudarc=$(cargo metadata --format-version 1 --features cuda --locked 2>/dev/null |
  python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
sys_rs=$(dirname "$cudarc")/src/driver/sys/mod.rs
stubs=$cuda/lib/stubs
mkdir -p "$stubs"
grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys_rs" | awk '{print "void " $4 "(void) {}"}' | sort -u >"$stubs/libcuda_stub.c"
symbols=$(wc -l <"$stubs/libcuda_stub.c")
if [[ $symbols -lt 100 ]]; then
  echo "error: found only $symbols driver symbols in $sys_rs" >&2
  exit 1
fi
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"

export PATH=$cuda/bin:$PATH CUDA_ROOT=$cuda CUDA_HOME=$cuda CUDA_PATH=$cuda \
  LIBRARY_PATH=$cuda/lib:$stubs CUDA_COMPUTE_CAP=$cap
cargo build --release --locked --features cuda --target-dir "$target" >&2
gzip -kf "$target/release/harness"
echo "$target/release/harness"

if [[ -n $bundle ]]; then
  cargo build --release --locked --features cuda --target-dir "$target" --example throughput >&2
  # The test binary's name carries a hash: ask cargo for it.
  golden=$(cargo test --release --locked --features cuda --target-dir "$target" --test golden \
    --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "golden"][-1])')
  for f in "$target/release/harness" "$target/release/examples/throughput" "$golden:golden"; do
    name=$(basename "${f#*:}")
    strip -o "$bundle/$name" "${f%%:*}"
    gzip -f "$bundle/$name"
  done
  echo "$bundle"
fi
