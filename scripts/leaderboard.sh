#!/usr/bin/env bash
# Regenerates the committed leaderboard: every shipped task (sst2 needs the network, so
# `mr` stands in for it) and `analyze --ablate auto` on both shipped models, then the
# report. Usage: scripts/leaderboard.sh [MODEL...]   (default: smollm2 gemma3)
# One model takes about 45 minutes on 2 cores; the seed is the default (0).
set -euo pipefail
cd "$(dirname "$0")/.."
models=("${@:-smollm2 gemma3}")
read -r -a models <<<"${models[*]}"
results=reports/results
python3 scripts/fetch_assets.py
cargo build --release --quiet
harness=${HARNESS_BIN:-target/release/harness}
for m in "${models[@]}"; do
  "$harness" eval --model "$m" --task mr,tweets,topics --limit 2000 --out "$results"
  "$harness" eval --model "$m" --task imdb,boolq-retrieval,boolq,austen,lee-sts --out "$results"
  # The same subsets again with the first token's MLP write removed (analyze's auto block).
  "$harness" eval --model "$m" --task mr --limit 2000 --ablate auto --out "$results"
  "$harness" eval --model "$m" --task lee-sts --ablate auto --out "$results"
  "$harness" analyze --model "$m" --ablate auto --out "$results"
done
"$harness" report --results "$results" --out reports
