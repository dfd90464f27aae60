#!/usr/bin/env bash
# A sweep on a real Slurm cluster: starts a single-node cluster (munged, slurmctld,
# slurmd) in a temporary directory, submits the job array `harness sweep emit slurm`
# writes for 2 tiny models x 2 tasks plus a unit that fails, and checks that every
# good unit's results equal a plain `harness eval`'s, that the failure is reported,
# that a resubmission runs nothing new and that `harness report` merges all units.
# Installs Debian's slurm-wlm and munge when missing and it may (root with apt-get);
# elsewhere it says why it skips, except under CI, where it fails. Stops every
# daemon it started, by process id. Needs the release binary (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
harness="$repo/${CARGO_TARGET_DIR:-target}/release/harness"
[[ -x $harness ]] || { echo "error: $harness is missing; run cargo build --release" >&2; exit 1; }

if ! command -v sbatch >/dev/null || ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing slurm-wlm and munge for the Slurm check" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  elif [[ -n ${CI:-} ]]; then
    echo "error: the Slurm check needs slurm-wlm and munge (Debian: apt-get install slurm-wlm munge)" >&2
    exit 1
  else
    echo "skipping the Slurm check: slurm-wlm and munge are not installed and this is not root with apt-get" >&2
    exit 0
  fi
fi

work=$(mktemp -d /tmp/harness-slurm.XXXXXX)
stop() {
  # Each daemon by the id it wrote, never by name: other clusters may run here.
  for f in "$work/slurmd.pid" "$work/slurmctld.pid" "$work/munge/munged.pid"; do
    if [[ -s $f ]]; then
      pid=$(cat "$f")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
  rm -rf "$work"
}
trap stop EXIT

# munged with its own key and socket, so that it neither needs nor disturbs a
# system-wide munge.
mkdir -p "$work/munge" "$work/state" "$work/spool" "$work/log"
chmod 700 "$work/munge"
head -c 1024 /dev/urandom >"$work/munge/munge.key"
chmod 400 "$work/munge/munge.key"
munged --force --key-file="$work/munge/munge.key" --socket="$work/munge/socket" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" \
  --seed-file="$work/munge/munged.seed"

host=$(hostname -s)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 2)}' /proc/meminfo)
# Ports of our own, so that a cluster already on this machine is left alone.
port=$((20000 + ($$ % 10000) * 2))
export SLURM_CONF="$work/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=harness-check
SlurmctldHost=$host
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/munge/socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
NodeName=$host CPUs=2 RealMemory=$mem_mb State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -i
slurmd
for i in $(seq 60); do
  [[ $(sinfo -h -o %T 2>/dev/null) == idle ]] && break
  [[ $i == 60 ]] && { echo "error: the Slurm node did not come up:" >&2; tail -n 5 "$work"/log/*.log >&2; exit 1; }
  sleep 0.5
done

# The sweep: two tiny models, two short tasks, and a model that does not exist.
sweep="$work/sweep"
mkdir -p "$sweep"
cat >"$sweep/sweep.toml" <<EOF
tasks = ["mr", "tweets"]

[settings]
limit = 40
truncate = true
resamples = 200

[[models]]
model = "$repo/tests/fixtures/tiny-llama"

[[models]]
model = "$repo/tests/fixtures/tiny-qwen2"

[[models]]
model = "$work/no-such-model"
EOF
"$harness" sweep plan "$sweep/sweep.toml"
"$harness" sweep emit slurm "$sweep/sweep.toml" --cpus 1 --mem-gb 1 --max-parallel 2 \
  --out "$sweep/job.sbatch"
grep -q -- '--array=0-2%2' "$sweep/job.sbatch"

fail() { echo "error: $*" >&2; tail -n 20 "$sweep"/results/logs/*.log >&2 || true; exit 1; }

# One unit fails, so the array does, and sbatch --wait says so.
if sbatch --wait "$sweep/job.sbatch" >"$work/submit1.txt"; then
  fail "the first submission succeeded although a unit cannot run"
fi
job1=$(awk '{print $NF}' "$work/submit1.txt")
logs="$sweep/results/logs"
grep -q "unit 2 (no-such-model): failed: unknown model" "$logs/harness-sweep-sweep-${job1}_2.log" \
  || fail "the failing unit's log does not report its error"

for model in tiny-llama tiny-qwen2; do
  for task in mr tweets; do
    [[ -s $sweep/results/$model/$task.json ]] || fail "$model/$task.json is missing"
  done
  # A plain eval with the same settings gives the same results, bar the timings and
  # the creation time.
  "$harness" --quiet eval --task mr,tweets --model "$repo/tests/fixtures/$model" --limit 40 \
    --truncate --resamples 200 --out "$work/plain" >/dev/null
  for task in mr tweets; do
    python3 - "$sweep/results/$model/$task.json" "$work/plain/$model/$task.json" <<'PY' \
      || fail "$model/$task.json differs from a plain harness eval"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for r in (a, b):
    del r["timings"], r["created"]
sys.exit(0 if a == b else 1)
PY
  done
done

# A resubmission runs nothing new: the good units are skipped, their files untouched.
stamps() { stat -c '%n %Y %s' "$sweep"/results/tiny-*/*.json; }
before=$(stamps)
sleep 1
if sbatch --wait "$sweep/job.sbatch" >"$work/submit2.txt"; then
  fail "the resubmission succeeded although a unit still cannot run"
fi
job2=$(awk '{print $NF}' "$work/submit2.txt")
for i in 0 1; do
  grep -q "complete, skipped" "$logs/harness-sweep-sweep-${job2}_$i.log" \
    || fail "unit $i ran again on resubmission"
done
[[ $(stamps) == "$before" ]] || fail "the resubmission rewrote result files"

# The merged report holds every unit and task.
"$harness" report --results "$sweep/results" --out "$work/report" >/dev/null
for name in tiny-llama tiny-qwen2 mr tweets; do
  grep -q "$name" "$work/report/leaderboard.md" || fail "the report lacks $name"
done
echo "slurm check: job arrays $job1 and $job2 ran the sweep; results equal plain eval; resubmission ran nothing new"
