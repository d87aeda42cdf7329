#!/usr/bin/env bash
# tests/gpu/run.sh — the one script for the GPU machine.
#
#   tests/gpu/run.sh build [DEST]   here (toolkit, no GPU): release build with CUDA
#                                   on, then qltest, qlbench, qlora (when
#                                   recipes/doctor.lua exists) and the Debian
#                                   shared libraries they need, packed into
#                                   DEST (default .carry/gpu, git-ignored) with
#                                   a copy of this script.
#                                   QL_GPU_NOBUILD=1 skips ./setup.sh (reuse bin/).
#   bash .carry/gpu/run.sh device   there (the device tool's machine): unpacks,
#                                   runs the CUDA tests, `qlora doctor`, the
#                                   timing table and a PyTorch ceiling on the
#                                   same card; logs under $OUT (or ./gpu-out).
#   QL_GPU_ONLY_TRAIN=1  stop after the GPU training tests and the recipes run
#   QL_GPU_BENCH="05b|7b|all both|peer|qlora"  also run bench/train_gpu.sh
#   QL_GPU_SANITIZE=1  run the decoder's op tests under compute-sanitizer memcheck
#   QL_GPU_BUNDLE=bench (build)  only qlora in the bundle (~half the size): for a call that also
#                       carries the peers' wheels (bench/train_gpu.sh QL_BUNDLE=DEST/bundle.tar.xz)
#
# Libraries: everything `ldd` lists except glibc (libc, libm, libpthread, libdl,
# librt, ld-linux), libstdc++/libgcc and CUDA's own (cuBLASLt comes from the
# machine's CUDA toolkit through the binary's rpath /usr/local/cuda/lib64).
# The bundle is xz-compressed (OpenBLAS alone is 35 MB) and unpacked with
# Python's tarfile, which the device machine has.
set -uo pipefail

mode="${1:-}"
here="$(cd "$(dirname "$0")" && pwd)"

build() {
  local root dest stage
  root="$(cd "$here/../.." && pwd)"
  dest="${1:-$root/.carry/gpu}"
  cd "$root" || exit 1
  if [ "${QL_GPU_NOBUILD:-0}" != 1 ]; then
    ./setup.sh --cuda=on || { echo "run.sh: build failed"; exit 1; }
  fi
  for f in bin/qltest build/lib/release/libqlengine.a build/kernels/release/libqlkernels.a; do
    [ -e "$f" ] || { echo "run.sh: $f missing: build first"; exit 1; }
  done
  # The bundle's programs leave MuPDF out (it would not fit the device tool's 64 MiB with
  # the repository): qltest without the PDF tests, qlora without qlora.pdf/qlora.text,
  # and qlbench; all linked with qltest's LDFLAGS (static archives pull only what is used).
  local ldflags cflags
  ldflags=$(sed -n '/ifeq ($(config),release)/,/endif/p' build/qltest.make | sed -n 's/^ *LDFLAGS *+= *//p')
  cflags="-std=c11 -O2 -g -Wall -Wextra -D_GNU_SOURCE -DQL_CUDA=1 -Iengine/core -Iengine/formats -Iengine/text -Iengine/model -Ibuild $(pkg-config --cflags lua5.4)"
  local tests=""
  for f in tests/c/*.c; do case "$f" in *test_pdf*|*test_text*) ;; *) tests="$tests $f";; esac; done
  gcc $cflags $tests $ldflags -o build/qltest_gpu || { echo "run.sh: qltest_gpu failed to build"; exit 1; }
  local luasrc=""
  for f in lua/*.c lua/host/*.c; do case "$f" in *l_pdf.c|*l_text.c) ;; *) luasrc="$luasrc $f";; esac; done
  gcc $cflags -DQL_NO_PDF $luasrc $ldflags -Wl,-Bstatic -llua5.4 -Wl,-Bdynamic -Wl,-E -lreadline \
      -o build/qlora_gpu || { echo "run.sh: qlora_gpu failed to build"; exit 1; }
  gcc $cflags tests/gpu/bench.c $ldflags -o build/qlbench || { echo "run.sh: qlbench failed to build"; exit 1; }

  stage="$(mktemp -d)"
  mkdir -p "$stage/gpu/bin" "$stage/gpu/lib"
  cp build/qltest_gpu "$stage/gpu/bin/qltest"
  cp build/qlbench "$stage/gpu/bin/"
  cp build/qlora_gpu "$stage/gpu/bin/qlora"
  cp -r recipes "$stage/gpu/"
  mkdir -p "$stage/gpu/lua" && cp -r lua/qlora "$stage/gpu/lua/"
  [ "${QL_GPU_BUNDLE:-}" = bench ] && rm -f "$stage/gpu/bin/qltest" "$stage/gpu/bin/qlbench"
  strip --strip-debug "$stage"/gpu/bin/* 2>/dev/null
  local skip='^(linux-vdso|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so|ld-linux|libstdc\+\+\.so|libgcc_s\.so|libcu|libnv)'
  for b in "$stage"/gpu/bin/*; do
    ldd "$b" | awk '$3 ~ /^\// { print $1, $3 }' | while read -r name path; do
      if echo "$name" | grep -qE "$skip"; then continue; fi
      [ -e "$stage/gpu/lib/$name" ] || cp -L "$path" "$stage/gpu/lib/$name"
    done
  done
  mkdir -p "$dest"
  rm -f "$dest/bundle.tar.xz"
  tar -C "$stage" -cf - gpu | xz -T2 -6 > "$dest/bundle.tar.xz"
  cp "$here/run.sh" "$dest/run.sh"
  rm -rf "$stage"
  echo "run.sh: bundle $(du -h "$dest/bundle.tar.xz" | cut -f1) in $dest:"
  tar -tJvf "$dest/bundle.tar.xz" | awk '{ printf "  %10s %s\n", $3, $6 }'
}

# the recipes end to end on a tiny random model: device=auto must pick the GPU; a GPU
# checkpoint resumes on the CPU; the adapter merges. Prints PASS/FAIL lines.
train_e2e() {
  local q="$1" d=/tmp/qle2e
  rm -rf "$d" && mkdir -p "$d"
  "$q" -e "qlora.llm.random_model('$d/model', {tokenizer = 'tests/fixtures/tokenizers/gpt2', layers = 2, hidden = 64, heads = 4, kv_heads = 2})" || { echo "FAIL e2e: model"; return; }
  "$q" -e "local f = io.open('$d/data.jsonl', 'w'); for line in io.lines('README.md') do if #line > 40 then f:write(qlora.json.encode({text = line}), '\\n') end end; f:close()"
  local common="model=$d/model data=$d/data.jsonl seq_len=64 batch=2 lr=3e-3 save_every=6 eval_every=6"
  "$q" recipes/train.lua $common out=$d/gpu steps=12 > "$d/gpu.log" 2>&1; local rc=$?
  grep -E "device|step 12|eval" "$d/gpu.log" | head -5
  grep -q "device cuda" "$d/gpu.log" && [ $rc = 0 ] && echo "PASS e2e: device=auto trained on the GPU" || { echo "FAIL e2e: GPU training (rc $rc)"; tail -20 "$d/gpu.log"; }
  "$q" recipes/train.lua $common out=$d/gpu2cpu steps=12 device=cpu resume=$d/gpu/checkpoint-6 > "$d/cpu.log" 2>&1; rc=$?
  grep -E "resumed|step 12" "$d/cpu.log" | head -3
  local lg lc
  lg=$(tail -1 "$d/gpu/metrics.jsonl" | sed -E 's/.*"loss":([0-9.e+-]+).*/\1/')
  lc=$(tail -1 "$d/gpu2cpu/metrics.jsonl" | sed -E 's/.*"loss":([0-9.e+-]+).*/\1/')
  echo "final loss: GPU run $lg, resumed on the CPU from the GPU's checkpoint-6 $lc"
  [ $rc = 0 ] && python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 2e-2 * abs(a) else 1)" "$lg" "$lc" \
    && echo "PASS e2e: a GPU checkpoint resumed on the CPU follows the GPU run" || echo "FAIL e2e: resume on the CPU (rc $rc)"
  "$q" recipes/merge.lua model=$d/model adapter=$d/gpu/adapter out=$d/merged > "$d/merge.log" 2>&1 \
    && [ -f "$d/merged/config.json" ] && echo "PASS e2e: merged" || { echo "FAIL e2e: merge"; tail -5 "$d/merge.log"; }
}

device() {
  local out="${OUT:-$PWD/gpu-out}" work=/tmp/qlgpu
  [ -d "$PWD/tests/fixtures" ] && export QL_FIXTURES="$PWD/tests/fixtures"
  mkdir -p "$out" "$work"
  python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$here/bundle.tar.xz" "$work" \
    || { echo "run.sh: cannot unpack $here/bundle.tar.xz"; exit 1; }
  local g="$work/gpu"
  export LD_LIBRARY_PATH="$g/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
    command -v cuobjdump >/dev/null && cuobjdump --list-elf "$g/bin/qltest" 2>&1 | sed 's/^/elf: /' | head -20
  } 2>&1 | tee "$out/env.log"

  echo "== CUDA tests (qltest cuda)"
  ( cd "$g" && timeout 300 ./bin/qltest cuda ) 2>&1 | tee "$out/qltest_cuda.log"
  echo "== all C tests (qltest)"
  ( cd "$g" && timeout 300 ./bin/qltest ) > "$out/qltest_all.log" 2>&1
  grep -E "^FAIL|^    |decoder_ops|passed" "$out/qltest_all.log" | head -60
  if [ -x "$g/bin/qlora" ]; then
    echo "== qlora doctor"
    ( cd "$g" && timeout 60 ./bin/qlora doctor ) 2>&1 | tee "$out/doctor.log"
  fi
  if [ "${QL_GPU_SANITIZE:-0}" = 1 ]; then
    echo "== compute-sanitizer memcheck over the decoder's kernels (caching allocator off)"
    local cs; cs=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    ( cd "$g" && QL_CUDA_NO_CACHE=1 timeout 300 "$cs" --tool memcheck --error-exitcode 9 \
        ./bin/qltest decoder_ops ) > "$out/sanitizer.log" 2>&1; echo "compute-sanitizer exit $?"
    grep -E "ERROR SUMMARY|LEAK SUMMARY|passed|Invalid|Leaked" "$out/sanitizer.log" | head -12
  fi
  echo "== Lua tests on the GPU: the decoder against transformers and the CPU, GPU training"
  for t in test_model test_gpu_train; do
    ( timeout 300 "$g/bin/qlora" tests/lua/run.lua $t ) > "$out/lua_$t.log" 2>&1
    grep -E "^FAIL|^ +\./|passed" "$out/lua_$t.log" | head -30
  done
  echo "== recipes on the GPU: train (device=auto picks it), checkpoint, resume on the CPU, merge"
  train_e2e "$g/bin/qlora" 2>&1 | tee "$out/train_e2e.log" | tail -25
  if [ "${QL_GPU_BENCH:-}" != "" ]; then
    echo "== training benchmark: bench/train_gpu.sh $QL_GPU_BENCH"
    QLORA="$g/bin/qlora" bash bench/train_gpu.sh $QL_GPU_BENCH 2>&1 | tail -30
  fi
  if [ "${QL_GPU_ONLY_TRAIN:-0}" = 1 ]; then return; fi
  echo "== timings (qlbench)"
  ( cd "$g" && timeout 240 ./bin/qlbench ) 2>&1 | tee "$out/bench.log"

  echo "== ceiling on this card (PyTorch)"
  PYTHONUNBUFFERED=1 timeout 180 python3 - <<'EOF' 2>&1 | tee "$out/ceiling.log"
import torch
def med(fn, reps=9, inner=5):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(inner): fn()
        e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) / 1e3 / inner)
    ts.sort(); return ts[len(ts) // 2]
print("torch", torch.__version__, torch.cuda.get_device_name(0))
for n in (4096, 8192):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16); b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = med(lambda: a @ b)
    print(f"ceiling matmul_bf16_{n} {2*n**3/t/1e12:.1f} TFLOP/s")
x = torch.randn(1 << 28, device="cuda"); y = torch.empty_like(x)
t = med(lambda: y.copy_(x), inner=3)
print(f"ceiling copy_f32_contiguous {2*x.numel()*4/t/1e9:.0f} GB/s")
EOF

  echo "== summary"
  {
    grep -E '^probe: gpu' "$out/bench.log"
    echo "cuda tests: $(grep -E '^[0-9]+ passed' "$out/qltest_cuda.log" | tail -1)"
    echo "all C tests: $(grep -E '^[0-9]+ passed' "$out/qltest_all.log" | tail -1)"
    printf '%-28s %14s %14s\n' measurement qlora ceiling
    for m in matmul_bf16_4096 matmul_bf16_8192 copy_f32_contiguous; do
      q=$(awk -v m="$m" '$1=="bench" && $2==m { print $3, $4 }' "$out/bench.log")
      c=$(awk -v m="$m" '$1=="ceiling" && $2==m { print $3, $4 }' "$out/ceiling.log")
      printf '%-28s %14s %14s\n' "$m" "${q:--}" "${c:--}"
    done
    awk '$1=="bench" && $2!~/^(matmul_bf16_4096|matmul_bf16_8192|copy_f32_contiguous)$/ { printf "%-28s %14s\n", $2, $3" "$4 }' "$out/bench.log"
  } | tee "$out/summary.txt"
}

case "$mode" in
  build) shift; build "$@" ;;
  device) device ;;
  *) echo "usage: tests/gpu/run.sh build [DEST] | run.sh device"; exit 2 ;;
esac
