#!/usr/bin/env bash
# bench/longest_seq.sh — the longest sequence a 7B QLoRA step trains at within a memory budget,
# on the GPU machine: bench/train_gpu.sh runs of qlora (batch 1, one step and no warm-up: the
# peak is reached in the first step) at growing seq until the process's nvidia-smi peak passes
# the budget or a run fails. QL_ARGS adds settings of bench/train_gpu.lua (ckpt=host: the layer
# checkpoints in host memory, which is what the longest sequences need).
#
#   bash bench/longest_seq.sh [BUDGET_GIB=24] [SHAPE=7b] [SEQS="8192 16384 24576 32768 40960 49152 57344 65536"]
#
# A run "trains in BUDGET" when it exits 0 and its nvidia-smi process peak (context included,
# polled every 0.2 s by train_gpu.sh) is at most BUDGET GiB; an H200 has room to overshoot, so
# the budget is measured rather than enforced. Attention is quadratic: at 64k tokens one step
# takes tens of seconds, so keep SEQS to what one device call (600 s) allows.
set -uo pipefail
budget="${1:-24}" shape="${2:-7b}"
seqs="${3:-8192 16384 24576 32768 40960 49152 57344 65536}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 1
best=0
for s in $seqs; do
  line=$(SEQ=$s STEPS=1 QL_ARGS="warmup=0 ${QL_ARGS:-}" RUN_TIMEOUT="${RUN_TIMEOUT:-200}" bash bench/train_gpu.sh "$shape" qlora 2>&1 \
         | awk -v s="seq=$s" '$1 ~ /^(05b|7b|8b)$/ && $2 == "qlora" && index($0, s) { l = $0 } END { print l }')
  smi=$(echo "$line" | awk '{ print $8 }')
  rc=$(echo "$line" | awk '{ print $10 }')
  tps=$(echo "$line" | awk '{ print $3 }')
  echo "longest_seq: seq $s: rc ${rc:-?} tokens/s ${tps:--} nvidia-smi ${smi:--} GiB"
  if [ "${rc:-1}" != 0 ] || [ -z "$smi" ] || [ "$smi" = "-" ] || awk -v m="$smi" -v b="$budget" 'BEGIN { exit !(m > b) }'; then
    break
  fi
  best=$s
done
echo "longest_seq: $shape trains at seq $best within $budget GiB (nvidia-smi process peak)"
