#!/usr/bin/env bash
# The project's test command (the README's, and what CI runs): fetches the pinned
# models and datasets, runs every Rust test in release mode (doc tests included),
# builds the documentation and runs the example, runs a sweep on a single-node
# Slurm cluster (scripts/slurm_check.sh), then renders a report of the committed
# fixture results and checks it in headless Chromium, installing Debian's slurm-wlm,
# munge and chromium first when they are missing and we may (root with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/fetch_assets.py
cargo test --release
# The library as users meet it: its documentation builds without a warning and the
# example runs on the default model and task.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
"${CARGO_TARGET_DIR:-target}/release/examples/layers"
scripts/slurm_check.sh
if ! command -v chromium >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing chromium for the browser check" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "error: the browser check needs chromium (Debian: apt-get install chromium)" >&2
    exit 1
  fi
fi
report=$(mktemp -d)
trap 'rm -rf "$report"' EXIT
"${CARGO_TARGET_DIR:-target}/release/harness" report --results tests/fixtures/results --out "$report"
scripts/browser_check.sh "$report"
