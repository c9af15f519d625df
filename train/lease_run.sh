#!/bin/bash
# Train for a fixed time on a borrowed machine and keep only what is small enough
# to bring back: fp16 exports of best.pt and last.pt, the logs and the curves.
#
#   train/lease_run.sh DATA.tar.xz OUT_DIR CONFIG BUDGET_MINUTES [INIT_CHECKPOINT]
#
# DATA.tar.xz holds a CROHME-layout folder named crohme/ (train/, 2014/, captions/...).
# The full run state (state.pt) stays on the machine: it is too large to copy back.
set -u
if [ $# -lt 4 ]; then
  echo "usage: $0 DATA.tar.xz OUT_DIR CONFIG BUDGET_MINUTES [INIT_CHECKPOINT]" >&2
  exit 2
fi
DATA=$1 OUT=$2 CONFIG=$3 BUDGET=$4 INIT=${5:-}
export PYTHONUNBUFFERED=1 PYTHONPATH=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" /tmp/lease_data
LOG=$OUT/console.log
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc;
  python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > "$LOG" 2>&1
tar -C /tmp/lease_data -xJf "$DATA" || { echo "cannot unpack $DATA" >> "$LOG"; exit 2; }
RUN=/tmp/lease_run
# Data loading and the last save come on top of the budget; the hard stop leaves them
# 90 s, so that the exports below still run. Pick BUDGET so that it plus 2 minutes fits
# the machine's limit per command (7.5 for 10 minutes).
timeout $(awk "BEGIN { print int($BUDGET * 60) + 90 }") python3 -m train.cli --config "$CONFIG" --data /tmp/lease_data/crohme \
    --out $RUN --budget-minutes "$BUDGET" ${INIT:+--init "$INIT"} > $RUN.console 2>&1
echo "train exit $?" >> "$LOG"
tr '\r' '\n' < $RUN.console | grep -v "it/s\]$" | tail -c 20000 >> "$LOG"  # tqdm redraws dropped
for f in best last; do
  [ -f $RUN/$f.pt ] && python3 -m train.cli export $RUN/$f.pt "$OUT/${f}_fp16.pt" >> "$LOG" 2>&1
done
for f in train.log metrics.jsonl curves.png config.json; do  # curves.png only once a validation ran
  [ -f $RUN/$f ] && cp $RUN/$f "$OUT/"
done
grep -E " val |stop" $RUN/train.log | tail -20
