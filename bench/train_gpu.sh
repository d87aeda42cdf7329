#!/usr/bin/env bash
# bench/train_gpu.sh — the QLoRA training benchmark on the GPU machine: qlora
# (bench/train_gpu.lua) against transformers + bitsandbytes + PEFT (bench/peer_train.py),
# same checkpoint, seq, batch and steps; tokens/s, step time and peak GPU memory.
#
#   bash bench/train_gpu.sh [05b|7b|8b|all] [both|three|peer|unsloth|qlora|gen] [QLORA_BINARY]
#   (both: peer and qlora; three: peer, Unsloth and qlora)
#
# Run from the checkout's root on the GPU machine. What it does:
#   - peer: installs the carried bitsandbytes wheel (.whl/, git-ignored: carry ".whl")
#     into /tmp/site (pip, or a plain unzip where pip is missing);
#   - qlora: the binary is $3, else $QLORA, else /tmp/qlgpu/gpu/bin/qlora; when it is
#     missing, unpacks $QL_BUNDLE (default .carry/gpu/bundle.tar.xz: tests/gpu/run.sh build;
#     carry ".carry/gpu")
#     there as `run.sh device` does. LD_LIBRARY_PATH gets the bundle's lib/ for qlora only;
#   - writes the random checkpoints once (/tmp/q05b, /tmp/q7b: bench/gen_checkpoint.py);
#   - runs each tool under `timeout`, polling nvidia-smi every 0.2 s meanwhile: the
#     process's GPU memory (--query-compute-apps, the run's PID) and the GPU's memory.used
#     minus its value before the run (for containers where nvidia-smi shows no PIDs);
#   - appends a row per run to /tmp/qltrain/results.tsv, so that separate calls on a
#     warm machine (say `05b`, then `7b peer`, then `7b qlora`) build one table, and prints
#     that table; logs and the table go to $OUT (./bench-out when OUT is unset).
# Environment: QL_ARGS (more settings of bench/train_gpu.lua, e.g. ckpt=0), TAG (words added to the
# row's settings, e.g. the environment a run had), SEQ (2048), BATCH (1), STEPS (10 for 05b, 5 for 7b), RUN_TIMEOUT (seconds
# per run: 200 for 05b, 270 for 7b), DEVICE (cuda; cpu tries the qlora side without a GPU).
# Keep each device call under its 600 s limit: the 7B checkpoint (15 GB) has to be written
# (`7b gen`) and each tool loads and quantizes it.
set -uo pipefail

shapes="${1:-05b}"
tools="${2:-both}"
QLORA="${3:-${QLORA:-/tmp/qlgpu/gpu/bin/qlora}}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root" || exit 1
out="${OUT:-$root/bench-out}"
state=/tmp/qltrain
mkdir -p "$out" "$state"
SEQ="${SEQ:-2048}"
BATCH="${BATCH:-1}"
DEVICE="${DEVICE:-cuda}"
QL_ARGS="${QL_ARGS:-}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$shapes" in all) shapes="05b 7b 8b" ;; 05b|7b|8b) ;; *) echo "usage: $0 [05b|7b|8b|all] [both|three|peer|unsloth|qlora|gen] [QLORA]"; exit 2 ;; esac
case "$tools" in
  both) tools="peer qlora" ;;
  three) tools="peer unsloth qlora" ;;
  peer|unsloth|qlora|gen) ;;
  *) echo "usage: $0 [05b|7b|8b|all] [both|three|peer|unsloth|qlora|gen] [QLORA]"; exit 2 ;;
esac

log() { echo "train_gpu: $*" | tee -a "$out/train_gpu.log"; }

setup_peer() {
  if ! PYTHONPATH=/tmp/site python3 -c "import bitsandbytes" 2>/dev/null; then
    ls .whl/bitsandbytes-*.whl >/dev/null 2>&1 || { log "no .whl/bitsandbytes-*.whl (carry \".whl\")"; return 1; }
    if python3 -m pip --version >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { log "pip could not install the wheel"; return 1; }
    else   # a wheel is a zip of the site-packages tree
      python3 -c "import zipfile,sys; [zipfile.ZipFile(w).extractall('/tmp/site') for w in sys.argv[1:]]" .whl/*.whl || return 1
    fi
  fi
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  python3 -c "import torch, transformers, peft, bitsandbytes as b; print('peer:', 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'bitsandbytes', b.__version__)" 2>&1 \
    | tail -1 | tee -a "$out/train_gpu.log"
}

# Unsloth: the carried site folder (bench/peer_unsloth.py says what is in it) on top of the peer's
setup_unsloth() {
  setup_peer || return 1
  if [ ! -d /tmp/unsloth-site/site ]; then
    [ -f .carry/unsloth/site.tar.xz ] || { log "no .carry/unsloth/site.tar.xz (carry \".carry/unsloth\")"; return 1; }
    mkdir -p /tmp/unsloth-site
    python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .carry/unsloth/site.tar.xz /tmp/unsloth-site || return 1
  fi
  local pv; pv=$(python3 -c 'import sys; print("py%d%d" % sys.version_info[:2])')
  UNSLOTH_PATH="/tmp/unsloth-site/site/$pv:/tmp/unsloth-site/site"
  PYTHONPATH="$UNSLOTH_PATH:$PYTHONPATH" python3 -c "import unsloth; print('unsloth', unsloth.__version__)" 2>&1 | tail -1 | tee -a "$out/train_gpu.log"
}

setup_qlora() {
  local bundle="${QL_BUNDLE:-.carry/gpu/bundle.tar.xz}"
  if [ ! -x "$QLORA" ]; then
    [ -f "$bundle" ] || { log "no $QLORA and no $bundle (carry its folder)"; return 1; }
    mkdir -p /tmp/qlgpu
    python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$bundle" /tmp/qlgpu || return 1
  fi
  [ -x "$QLORA" ] || { log "$QLORA missing after unpacking"; return 1; }
  QLORA_LIBS="$(cd "$(dirname "$QLORA")/.." && pwd)/lib"
  log "qlora: $QLORA"
}

# gen SHAPE -> prints the checkpoint folder, writing it when absent (the index is written last)
gen() {
  local name dir
  case "$1" in 05b) name=qwen2.5-0.5b dir=/tmp/q05b ;; 7b) name=qwen2.5-7b dir=/tmp/q7b ;; 8b) name=llama-3.1-8b dir=/tmp/l8b ;; esac
  if [ ! -f "$dir/model.safetensors.index.json" ]; then
    local t0=$SECONDS
    python3 bench/gen_checkpoint.py "$name" "$dir" >&2 || return 1
    echo "train_gpu: wrote $dir in $((SECONDS - t0)) s ($(du -sh "$dir" | cut -f1))" >&2
  fi
  echo "$dir"
}

# child PIDs of PID (from /proc, no procps needed)
children() { awk -v p="$1" '$4 == p { print $1 }' /proc/[0-9]*/stat 2>/dev/null; }

# measure SHAPE TOOL TIMEOUT COMMAND...: runs the command under timeout with nvidia-smi polling
measure() {
  local shape="$1" tool="$2" limit="$3"; shift 3
  local tag="${shape}_${tool}" base smi1 smi2 tpid pid="" rc
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
  nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits -lms 200 > "$state/$tag.apps" 2>/dev/null &
  smi1=$!
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$state/$tag.gpu" 2>/dev/null &
  smi2=$!
  log "== $shape $tool: $* (timeout $limit s)"
  timeout "$limit" "$@" > "$out/$tag.log" 2>&1 &
  tpid=$!
  for _ in $(seq 100); do pid=$(children "$tpid" | head -1); [ -n "$pid" ] && break; sleep 0.05; done
  wait "$tpid"; rc=$?
  kill "$smi1" "$smi2" 2>/dev/null; wait "$smi1" "$smi2" 2>/dev/null
  grep -E '^(peer_train|qlora_train)' "$out/$tag.log"
  [ "$rc" = 0 ] || { log "$shape $tool exited $rc (124: timed out); last lines:"; tail -5 "$out/$tag.log"; }
  # MiB -> GiB; the run's own PID when nvidia-smi shows it, else "-"
  local app gpu
  app=$(awk -F', *' -v p="$pid" '$1 == p && $2 + 0 > m { m = $2 + 0 } END { if (m > 0) printf "%.2f", m / 1024; else print "-" }' "$state/$tag.apps")
  gpu=$(awk -v b="$base" '$1 + 0 > m { m = $1 + 0 } END { if (m > 0) printf "%.2f", (m - b) / 1024; else print "-" }' "$state/$tag.gpu")
  local line
  line=$(grep -E '^(peer_train|qlora_train) shape=' "$out/$tag.log" | tail -1)
  kv() { echo "$line" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'; }
  local tps ms loss alloc resv
  if [ "$tool" != qlora ]; then alloc=$(kv peak_alloc_gib); resv=$(kv peak_reserved_gib)
  else alloc=$(kv peak_gib); resv=$(kv used_gib); fi
  tps=$(kv tokens_per_s); ms=$(kv step_ms); loss=$(kv loss)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$shape" "$tool" "${tps:--}" "${ms:--}" "${loss:--}" \
    "${alloc:--}" "${resv:--}" "$app" "$gpu" "$rc" "seq=$SEQ batch=$BATCH steps=$steps${QL_ARGS:+ $QL_ARGS}${TAG:+ $TAG}" \
    >> "$state/results.tsv"
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ) shapes: $shapes tools: $tools seq=$SEQ batch=$BATCH"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1
} | tee -a "$out/train_gpu.log"
peer_ok=0 qlora_ok=0 unsloth_ok=0
for t in $tools; do
  case "$t" in
    peer) setup_peer && peer_ok=1 ;;
    unsloth) setup_unsloth && unsloth_ok=1 ;;
    qlora) setup_qlora && qlora_ok=1 ;;
  esac
done

for s in $shapes; do
  dir=$(gen "$s") || { log "could not write the $s checkpoint (python3 with numpy needed)"; continue; }
  case "$s" in 05b) steps="${STEPS:-10}" limit="${RUN_TIMEOUT:-200}" ;; *) steps="${STEPS:-5}" limit="${RUN_TIMEOUT:-270}" ;; esac
  for t in $tools; do
    case "$t" in
      peer) [ "$peer_ok" = 1 ] && measure "$s" peer "$limit" python3 bench/peer_train.py "$dir" "$SEQ" "$BATCH" "$steps" ;;
      unsloth) [ "$unsloth_ok" = 1 ] && measure "$s" unsloth "$limit" env PYTHONPATH="$UNSLOTH_PATH:$PYTHONPATH" \
                 python3 bench/peer_unsloth.py "$dir" "$SEQ" "$BATCH" "$steps" ;;
      qlora) [ "$qlora_ok" = 1 ] && measure "$s" qlora "$limit" env LD_LIBRARY_PATH="$QLORA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
               "$QLORA" bench/train_gpu.lua dir="$dir" seq="$SEQ" batch="$BATCH" steps="$steps" device="$DEVICE" $QL_ARGS ;;
    esac
  done
done

# the table of every run on this machine so far (this call and earlier ones)
{
  echo "== QLoRA training, LoRA r=16 on all projections, NF4 base, gradient checkpointing (runs on this machine so far)"
  printf '%-5s %-6s %11s %9s %8s %12s %13s %12s %12s %4s %s\n' shape tool tokens/s step_ms loss "alloc_peak" "reserved/used" "smi_process" "smi_gpu_delta" rc settings
  [ -f "$state/results.tsv" ] && awk -F'\t' '{ printf "%-5s %-6s %11s %9s %8s %12s %13s %12s %12s %4s %s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 }' "$state/results.tsv"
  echo "GiB. alloc_peak: torch.cuda.max_memory_allocated / qlora's engine-accounted peak;"
  echo "reserved/used: torch.cuda.max_memory_reserved / qlora's total - free at the end;"
  echo "smi_process: max nvidia-smi used_memory of the run's PID (- when nvidia-smi shows no PIDs);"
  echo "smi_gpu_delta: max nvidia-smi memory.used during the run minus its value before."
} | tee "$out/train_table.txt"
cp "$state/results.tsv" "$out/train_results.tsv" 2>/dev/null
exit 0
