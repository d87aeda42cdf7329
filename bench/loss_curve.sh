#!/usr/bin/env bash
# bench/loss_curve.sh — a 300-step QLoRA loss curve of qlora beside transformers + bitsandbytes +
# PEFT on the same model, token rows, initial adapter and settings, on the GPU machine.
#
#   bash bench/loss_curve.sh [STEPS=300] [LR=1e-3]
#
# Needs: the rows (bench/loss_curve_data.lua, made here from a real corpus through the pipeline
# and carried as .carry/lc/rows.safetensors), the 0.5B-shaped random checkpoint (bench/
# gen_checkpoint.py qwen2.5-0.5b, written when absent), the peer set up as bench/train_gpu.sh
# does (carried bitsandbytes wheel) and qlora ($QLORA, default the unpacked bundle).
# Writes $OUT/loss_curve.tsv (step, peer loss, qlora loss) and prints the differences.
set -uo pipefail
steps="${1:-300}" lr="${2:-1e-3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 1
out="${OUT:-$root/bench-out}"
mkdir -p "$out"
QLORA="${QLORA:-/tmp/qlgpu/gpu/bin/qlora}"
rows="${ROWS:-.carry/lc/rows.safetensors}"
export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -f /tmp/q05b/model.safetensors.index.json ] || python3 bench/gen_checkpoint.py qwen2.5-0.5b /tmp/q05b >/dev/null || exit 1
rm -rf /tmp/lc_adapter0
python3 bench/loss_curve_peer.py /tmp/q05b "$rows" /tmp/lc_adapter0 "$steps" "$lr" > "$out/loss_curve_peer.log" 2>&1 \
  || { echo "loss_curve: the peer failed"; tail -5 "$out/loss_curve_peer.log"; exit 1; }
LD_LIBRARY_PATH="$(dirname "$QLORA")/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$QLORA" bench/loss_curve.lua \
  model=/tmp/q05b rows="$rows" adapter=/tmp/lc_adapter0 steps="$steps" lr="$lr" > "$out/loss_curve_qlora.log" 2>&1 \
  || { echo "loss_curve: qlora failed"; tail -5 "$out/loss_curve_qlora.log"; exit 1; }
python3 - "$out" <<'PY'
import sys
out = sys.argv[1]
def read(tool):
    return {int(l.split()[2]): float(l.split()[3]) for l in open(f"{out}/loss_curve_{tool}.log") if l.startswith("loss_curve ")}
p, q = read("peer"), read("qlora")
ks = sorted(set(p) & set(q))
with open(f"{out}/loss_curve.tsv", "w") as f:
    f.write("step\tpeer\tqlora\n")
    for k in ks: f.write(f"{k}\t{p[k]:.6f}\t{q[k]:.6f}\n")
d = [abs(p[k] - q[k]) for k in ks]
def mean(xs): return sum(xs) / len(xs)
last = ks[-10:]
print(f"loss_curve: {len(ks)} steps; first loss peer {p[ks[0]]:.4f} qlora {q[ks[0]]:.4f}; "
      f"mean of the last 10 peer {mean([p[k] for k in last]):.4f} qlora {mean([q[k] for k in last]):.4f}")
print(f"loss_curve: |peer - qlora| mean {mean(d):.4f}, max {max(d):.4f} (step {ks[d.index(max(d))]}), "
      f"relative mean {mean([abs(p[k] - q[k]) / p[k] for k in ks]):.4%}")
for k in ks:
    if k in (1, 2, 5, 10, 25, 50, 100, 150, 200, 250, 300): print(f"  step {k:4d}  peer {p[k]:.4f}  qlora {q[k]:.4f}")
PY
