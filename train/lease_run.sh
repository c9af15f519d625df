#!/bin/bash
# Train for a fixed time on a borrowed machine and keep only what is small enough
# to bring back: fp16 exports of best.pt and last.pt, metrics.jsonl, and console.log
# (environment, the run's output and its train.log). Four files, so that two runs
# fit the eight files a lease brings back.
#
#   [WORKERS=N] [SEED=N] train/lease_run.sh DATA.tar.xz OUT_DIR CONFIG BUDGET_MINUTES [INIT_CHECKPOINT]
#
# Two runs can share one machine (`... & ... & wait`, WORKERS splitting the cores):
# each unpacks and trains in its own temporary folders, named after OUT_DIR.
# DATA.tar.xz holds a CROHME-layout folder named crohme/ (train/, 2014/, captions/...).
# The full run state (state.pt) stays on the machine: it is too large to copy back.
set -u
if [ $# -lt 4 ]; then
  echo "usage: $0 DATA.tar.xz OUT_DIR CONFIG BUDGET_MINUTES [INIT_CHECKPOINT]" >&2
  exit 2
fi
DATA=$1 OUT=$2 CONFIG=$3 BUDGET=$4 INIT=${5:-}
export PYTHONUNBUFFERED=1 PYTHONPATH=$(cd "$(dirname "$0")/.." && pwd)
NAME=$(basename "$OUT")
mkdir -p "$OUT" "/tmp/lease_data_$NAME"
LOG=$OUT/console.log
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc;
  python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > "$LOG" 2>&1
tar -C "/tmp/lease_data_$NAME" -xJf "$DATA" || { echo "cannot unpack $DATA" >> "$LOG"; exit 2; }
RUN=/tmp/lease_run_$NAME
# Data loading, the validation of the last weights and the last save come on top of
# the budget; the hard stop leaves them 90 s, so that the exports below still run. Pick BUDGET so that it plus 2 minutes fits
# the machine's limit per command (7.5 for 10 minutes).
timeout $(awk "BEGIN { print int($BUDGET * 60) + 90 }") python3 -m train.cli --config "$CONFIG" --data "/tmp/lease_data_$NAME/crohme" \
    --out $RUN --budget-minutes "$BUDGET" ${INIT:+--init "$INIT"} ${WORKERS:+--num-workers "$WORKERS"} ${SEED:+--seed "$SEED"} > $RUN.console 2>&1
echo "train exit $?" >> "$LOG"
tr '\r' '\n' < $RUN.console | grep -v "it/s\]$" | tail -c 20000 >> "$LOG"  # tqdm redraws dropped
for f in best last; do
  [ -f $RUN/$f.pt ] && python3 -m train.cli export $RUN/$f.pt "$OUT/${f}_fp16.pt" >> "$LOG" 2>&1
done
[ -f $RUN/metrics.jsonl ] && cp $RUN/metrics.jsonl "$OUT/"
{ echo "--- train.log"; cat $RUN/train.log; } >> "$LOG" 2>&1
grep -E " val |stop" $RUN/train.log | tail -20 | sed "s/^/$NAME: /"
