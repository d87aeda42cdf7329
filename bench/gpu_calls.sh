#!/usr/bin/env bash
# bench/gpu_calls.sh — the GPU machine's measurements of the QLoRA training issue, as three device
# calls of under 600 s each (bench/RESULTS.md records what they print). Run from the checkout's root.
#
#   bash bench/gpu_calls.sh verify    carry .carry/gpu .whl: the CUDA and GPU-training tests (again
#                                     with QL_DEQUANT_AHEAD=0), QL_PROFILE's breakdown of a 7B step,
#                                     then the 7B step with checkpoints on the device or in host
#                                     memory, with and without dequantization ahead, beside the peer
#   bash bench/gpu_calls.sh peers     carry .carry/gpub .whl .carry/unsloth: the 7B step of qlora,
#                                     transformers + bitsandbytes + PEFT and Unsloth in one call
#                                     (.carry/gpub: QL_GPU_BUNDLE=bench tests/gpu/run.sh build
#                                     .carry/gpub, which leaves the test programs out to fit 64 MiB)
#   bash bench/gpu_calls.sh long      carry .carry/gpu: the longest sequence a 7B step trains at in
#                                     24 GiB, with the layer checkpoints in host memory
#
# Each prints a few lines as it goes and a table at the end; logs go under $OUT.
set -u
T0=$SECONDS
call="${1:-}"
g=/tmp/qlgpu/gpu
stamp() { echo "== $1 at $((SECONDS - T0)) s"; }

case "$call" in
  verify)
    # the tests, and compute-sanitizer memcheck over the decoder's op tests (flash both ways)
    QL_GPU_ONLY_TRAIN=1 QL_GPU_SANITIZE=1 bash .carry/gpu/run.sh device 2>&1 \
      | grep -E "passed|^FAIL|PASS|ERROR|^ +\./|compute-sanitizer|SUMMARY" | tail -30
    stamp "tests"
    QLORA=$g/bin/qlora bash bench/train_gpu.sh 7b gen > /dev/null 2>&1
    stamp "7b checkpoint"
    dir=/tmp/q7b
    ( export LD_LIBRARY_PATH="$g/lib"
      QL_PROFILE=1 timeout 120 "$g/bin/qlora" bench/train_gpu.lua dir=$dir steps=1 warmup=1 2>&1 | grep -E "^profile: train" | tail -1 )
    stamp "profile"
    QLORA=$g/bin/qlora STEPS=5 bash bench/train_gpu.sh 7b both 2>&1 | grep -E "^peer:|exited"
    QLORA=$g/bin/qlora STEPS=5 QL_ARGS=ckpt=host bash bench/train_gpu.sh 7b qlora 2>&1 | grep -E "exited"
    stamp "7b: peer, device checkpoints, host checkpoints"
    QL_DEQUANT_AHEAD=0 TAG=QL_DEQUANT_AHEAD=0 QLORA=$g/bin/qlora STEPS=5 bash bench/train_gpu.sh 7b qlora 2>&1 | grep -E "exited"
    QL_ADAPTER_CAST=each TAG=QL_ADAPTER_CAST=each QLORA=$g/bin/qlora STEPS=5 bash bench/train_gpu.sh 7b qlora 2>&1 | grep -E "exited"
    stamp "7b: without dequantization ahead; adapters cast per product"
    if [ $((SECONDS - T0)) -lt 470 ]; then   # the GPU training tests on the default-stream path too
      LD_LIBRARY_PATH="$g/lib" QL_DEQUANT_AHEAD=0 timeout 100 "$g/bin/qlora" tests/lua/run.lua test_gpu_train 2>&1 \
        | grep -E "^FAIL|^ +\./|passed" | head -12
      stamp "GPU training tests with QL_DEQUANT_AHEAD=0"
    fi
    ;;
  peers)
    export QL_BUNDLE=.carry/gpub/bundle.tar.xz
    QLORA=$g/bin/qlora STEPS=5 bash bench/train_gpu.sh 7b three 2>&1 | grep -E "^peer:|^unsloth|exited"
    stamp "7b three"
    if [ $((SECONDS - T0)) -lt 380 ]; then
      QLORA=$g/bin/qlora STEPS=3 BATCH=4 RUN_TIMEOUT=150 bash bench/train_gpu.sh 7b unsloth 2>&1 | grep -E "exited"
      stamp "7b batch 4, Unsloth"
    fi
    ;;
  long)
    QLORA=$g/bin/qlora bash bench/train_gpu.sh 7b gen > /dev/null 2>&1
    stamp "7b checkpoint"
    # one causal sequence: attention grows with its square (~90 s a step at 64k, ~125 s at 112k)
    QLORA=$g/bin/qlora QL_ARGS=ckpt=host RUN_TIMEOUT=220 bash bench/longest_seq.sh 24 7b "65536 98304 114688"
    stamp "longest sequence"
    ;;
  *)
    echo "usage: bash bench/gpu_calls.sh verify|peers|long"; exit 2 ;;
esac
stamp "all"
[ -f /tmp/qltrain/results.tsv ] && { echo "shape tool tokens/s step_ms loss alloc reserved smi_process smi_delta rc settings"; cat /tmp/qltrain/results.tsv; }
