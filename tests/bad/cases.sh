# tests/bad/cases.sh — the bad-input catalogue, one `bad` line per case (run by tests/bad/run.sh):
#   bad NAME EXIT 'REGEX' 'SETUP' 'COMMAND' ['CHECK']
# EXIT: a status, nz (any failure: the recipes use 2 for settings, 1 for failures) or any.
# SETUP and COMMAND run in the case folder ($C); the output folder is $OUT; the good
# inputs (read-only) are $IN/model, $IN/data.jsonl, $IN/run (checkpoint-2, adapter),
# $IN/good.gguf, $IN/big and $IN/big-adapter. REGEX must name the file at fault.
# Helpers (run.sh): model DIR, jset FILE 'STMT on t', stset FILE 'STMT on h', bytes FILE
# '\xNN' OFFSET, keep PATH, train ARGS (MODEL=, DATA=, STEPS= override), merge, export_gguf,
# pdf_to_md, open_gguf FILE, small_fs DIR KiB, ro_fs DIR, signal_when SIG GLOB CMD...

# ---------------------------------------------------------------- safetensors (model weights)
T='MODEL=m train'
bad st-empty nz 'm/model.safetensors' 'model m; : > m/model.safetensors' "$T"
bad st-short-header nz 'm/model.safetensors' 'model m; truncate -s 5 m/model.safetensors' "$T"
bad st-header-length-huge nz 'm/model.safetensors' 'model m; bytes m/model.safetensors "\xff\xff\xff\xff\xff\xff\xff\x7f" 0' "$T"
bad st-header-not-json nz 'm/model.safetensors' 'model m; bytes m/model.safetensors "{\"x\" @@ ]]" 8' "$T"
bad st-offsets-past-end nz 'm/model.safetensors' 'model m; stset m/model.safetensors "h[\"model.norm.weight\"].data_offsets[2] = 1 << 40"' "$T"
bad st-offsets-negative nz 'm/model.safetensors' 'model m; stset m/model.safetensors "h[\"model.norm.weight\"].data_offsets = {math.mininteger, 0}"' "$T"
bad st-offsets-reversed nz 'm/model.safetensors' 'model m; stset m/model.safetensors "local o = h[\"model.norm.weight\"].data_offsets; o[1], o[2] = o[2], o[1]"' "$T"
bad st-shape-vs-bytes nz 'm/model.safetensors' 'model m; stset m/model.safetensors "h[\"model.norm.weight\"].shape = {999}"' "$T"
bad st-shape-huge nz 'm/model.safetensors' 'model m; stset m/model.safetensors "h[\"model.norm.weight\"].shape = {1 << 40, 1 << 40}"' "$T"
bad st-dtype-unknown nz 'm/model.safetensors' 'model m; stset m/model.safetensors "h[\"model.norm.weight\"].dtype = \"Q9\""' "$T"
bad st-data-cut nz 'm/model.safetensors' 'model m; truncate -s -100 m/model.safetensors' "$T"
bad st-tensor-missing nz 'model.norm.weight' 'model m; stset m/model.safetensors "h[\"model.norm.weight\"] = nil"' "$T"
bad st-header-array nz 'm/model.safetensors' 'model m; stset m/model.safetensors "h = \"[1,2,3]\""' "$T"
bad st-is-directory nz 'm/model.safetensors' 'model m; rm m/model.safetensors; mkdir m/model.safetensors' "$T"
bad st-dangling-link nz 'm/model.safetensors|safetensors' 'model m; rm m/model.safetensors; ln -s /nonexistent/x m/model.safetensors' "$T"

# ---------------------------------------------------------------- model.safetensors.index.json
IDX='model m; mv m/model.safetensors m/model-00001-of-00001.safetensors; printf "{\"weight_map\": {\"model.norm.weight\": %s}}" '
bad index-dotdot nz 'index.json' "$IDX"'"\"../outside/x.safetensors\"" > m/model.safetensors.index.json' "$T"
bad index-absolute nz 'index.json' "$IDX"'"\"/etc/passwd\"" > m/model.safetensors.index.json' "$T"
bad index-not-a-string nz 'index.json' "$IDX"'"5" > m/model.safetensors.index.json' "$T"
bad index-missing-shard nz 'model-00002-of-00002.safetensors' "$IDX"'"\"model-00002-of-00002.safetensors\"" > m/model.safetensors.index.json' "$T"
bad index-not-json nz 'index.json' 'model m; mv m/model.safetensors m/model-00001-of-00001.safetensors; echo "{weight_map" > m/model.safetensors.index.json' "$T"

# ---------------------------------------------------------------- config.json
bad config-missing nz 'config.json' 'model m; rm m/config.json' "$T"
bad config-not-json nz 'm/config.json' 'model m; echo "{\"model_type\": qwen2" > m/config.json' "$T"
bad config-empty-object nz 'm/config.json' 'model m; echo "{}" > m/config.json' "$T"
bad config-layers-1e9 nz 'm/config.json.*num_hidden_layers' 'model m; jset m/config.json "t.num_hidden_layers = 1e9"' "$T"
bad config-heads-1e9 nz 'm/config.json' 'model m; jset m/config.json "t.num_attention_heads = 1e9; t.head_dim = 4"' "$T"
bad config-hidden-negative nz 'm/config.json.*hidden_size' 'model m; jset m/config.json "t.hidden_size = -32"' "$T"
bad config-vocab-string nz 'm/config.json.*vocab_size' 'model m; jset m/config.json "t.vocab_size = \"many\""' "$T"
bad config-model-type-unknown nz 'm/config.json.*[Gg]pt99' 'model m; jset m/config.json "t.model_type = \"gpt99\"; t.architectures = {\"Gpt99ForCausalLM\"}"' "$T"
bad config-vocab-smaller nz 'vocab|model.safetensors' 'model m; jset m/config.json "t.vocab_size = 100"' "$T"
bad config-is-directory nz 'm/config.json' 'model m; rm m/config.json; mkdir m/config.json' "$T"

# ---------------------------------------------------------------- tokenizer.json / tokenizer_config.json
bad tok-missing nz 'tokenizer.json' 'model m; rm m/tokenizer.json' "$T"
bad tok-not-json nz 'm/tokenizer.json' 'model m; echo "{\"model\": [" > m/tokenizer.json' "$T"
bad tok-cut-in-half nz 'm/tokenizer.json' 'model m; truncate -s 5000 m/tokenizer.json' "$T"
bad tok-model-type-unknown nz 'm/tokenizer.json' 'model m; jset m/tokenizer.json "t.model.type = \"WordPiece9\""' "$T"
bad tok-vocab-not-object nz 'm/tokenizer.json' 'model m; jset m/tokenizer.json "t.model.vocab = 5"' "$T"
bad tok-merges-bad nz 'm/tokenizer.json' 'model m; jset m/tokenizer.json "t.model.merges = {7, {}, \"a\"}"' "$T"
bad tok-added-id-huge nz 'tokenizer' 'model m; jset m/tokenizer.json "t.added_tokens[#t.added_tokens + 1] = {id = 999999, content = \"<big>\", special = true, single_word = false, lstrip = false, rstrip = false, normalized = false}"' "$T"
bad tok-config-not-json nz 'tokenizer_config.json' 'model m; echo "{chat" > m/tokenizer_config.json' "$T"

# ---------------------------------------------------------------- JSONL training data
bad data-missing nz 'nope.jsonl' '' 'DATA=nope.jsonl train'
bad data-empty nz 'empty.jsonl' ': > empty.jsonl' 'DATA=empty.jsonl train'
bad data-all-garbage nz 'bad.jsonl' 'printf "not json\n{\"text\": \n\x00\x01\x02\n" > bad.jsonl' 'DATA=bad.jsonl train'
bad data-line-not-json nz 'mixed.jsonl:3' 'head -20 $IN/data.jsonl > mixed.jsonl; sed -i "3s/.*/{\"text\": broken/" mixed.jsonl' 'DATA=mixed.jsonl train'
bad data-messages-not-tables 0 'msgs.jsonl:2' 'head -20 $IN/data.jsonl > msgs.jsonl; sed -i "2s/.*/{\"messages\":[1,2]}/" msgs.jsonl' 'DATA=msgs.jsonl train'
bad data-wrong-field-types 0 'types.jsonl:1' '{ echo "{\"text\": 12}"; echo "{\"instruction\": {}, \"output\": []}"; head -20 $IN/data.jsonl; } > types.jsonl' 'DATA=types.jsonl train'
bad data-huge-record 0 '' '$Q -e "local f = io.open(\"huge.jsonl\", \"w\") f:write(qlora.json.encode({text = (\"word \"):rep(1000000)}), \"\\n\") f:close()"' 'DATA=huge.jsonl train'
bad data-is-directory nz 'dir.jsonl' 'mkdir dir.jsonl' 'DATA=dir.jsonl train'

# ---------------------------------------------------------------- checkpoints (resume=)
CK='cp -r $IN/run run; chmod -R u+w run'
bad ckpt-no-state nz 'checkpoint-2' "$CK"'; rm run/checkpoint-2/trainer_state.json' 'train resume=run/checkpoint-2'
bad ckpt-state-not-json nz 'trainer_state.json' "$CK"'; echo "{\"step\": " > run/checkpoint-2/trainer_state.json' 'train resume=run/checkpoint-2'
bad ckpt-step-string nz 'trainer_state.json.*step' "$CK"'; jset run/checkpoint-2/trainer_state.json "t.step = \"two\""' 'train resume=run/checkpoint-2'
bad ckpt-step-negative nz 'trainer_state.json.*step' "$CK"'; jset run/checkpoint-2/trainer_state.json "t.step = -5"' 'train resume=run/checkpoint-2'
bad ckpt-optimizer-missing nz 'optimizer.safetensors' "$CK"'; rm run/checkpoint-2/optimizer.safetensors' 'train resume=run/checkpoint-2'
bad ckpt-optimizer-cut nz 'optimizer.safetensors' "$CK"'; truncate -s -64 run/checkpoint-2/optimizer.safetensors' 'train resume=run/checkpoint-2'
bad ckpt-optimizer-shapes nz 'optimizer.safetensors' "$CK"'; stset run/checkpoint-2/optimizer.safetensors "for k, v in pairs(h) do if k ~= \"__metadata__\" then v.shape = {#k, 1}; v.data_offsets = {0, #k * 4} end end"' 'train resume=run/checkpoint-2'
bad ckpt-adapter-missing nz 'adapter_model.safetensors|checkpoint-2' "$CK"'; rm run/checkpoint-2/adapter_model.safetensors' 'train resume=run/checkpoint-2'
bad ckpt-resume-keeps-its-settings 0 'resuming with the checkpoint.s LoRA settings r=4 \(this run asked r=8\)' "$CK" 'train resume=run/checkpoint-2 r=8' 'tool ckpt out'
bad ckpt-not-a-folder nz 'nothing-here' '' 'train resume=nothing-here/checkpoint-9'

# ---------------------------------------------------------------- PEFT adapters (merge)
AD='cp -r $IN/run/adapter ad; chmod -R u+w ad'
M='merge model=$IN/model adapter=ad out=$OUT'
bad adapter-no-config nz 'adapter_config.json' "$AD"'; rm ad/adapter_config.json' "$M"
bad adapter-config-not-json nz 'adapter_config.json' "$AD"'; echo "{\"r\": " > ad/adapter_config.json' "$M"
bad adapter-r-zero nz 'adapter_config.json.*\br\b|"r"' "$AD"'; jset ad/adapter_config.json "t.r = 0"' "$M"
bad adapter-r-string nz 'adapter_config.json' "$AD"'; jset ad/adapter_config.json "t.r = \"sixteen\""' "$M"
bad adapter-unknown-target nz 'adapter' "$AD"'; jset ad/adapter_config.json "t.target_modules = {\"warp_core\"}"' "$M"
bad adapter-weights-cut nz 'adapter_model.safetensors' "$AD"'; truncate -s -50 ad/adapter_model.safetensors' "$M"
bad adapter-wrong-model nz 'adapter_model.safetensors' '' 'merge model=$IN/big adapter=$IN/run/adapter out=$OUT'
bad adapter-nan nz 'adapter_model.safetensors|NaN|non-finite' "$AD"'; $Q -e "local t, m = qlora.tensor.load(\"ad/adapter_model.safetensors\") local c = {} for k, v in pairs(t) do c[k] = v end local k = next(c) c[k] = c[k]:mul(0/0) qlora.tensor.save(\"ad/adapter_model.safetensors\", c, m)"' "$M"

# ---------------------------------------------------------------- GGUF (qlora.gguf.open)
G='cp $IN/good.gguf g.gguf; chmod u+w g.gguf'
bad gguf-empty nz 'g.gguf' ': > g.gguf' 'open_gguf g.gguf'
bad gguf-bad-magic nz 'g.gguf' "$G"'; bytes g.gguf "GGUX" 0' 'open_gguf g.gguf'
bad gguf-version-99 nz 'g.gguf.*version' "$G"'; bytes g.gguf "\x63" 4' 'open_gguf g.gguf'
bad gguf-cut nz 'g.gguf' "$G"'; truncate -s 200 g.gguf' 'open_gguf g.gguf'
bad gguf-tensor-count-huge nz 'g.gguf' "$G"'; bytes g.gguf "\xff\xff\xff\xff\xff\xff\xff\x7f" 8' 'open_gguf g.gguf'
bad gguf-kv-count-huge nz 'g.gguf' "$G"'; bytes g.gguf "\xff\xff\xff\xff\xff\xff\xff\x0f" 16' 'open_gguf g.gguf'
bad gguf-key-length-huge nz 'g.gguf' "$G"'; bytes g.gguf "\xf0\xff\xff\xff\xff\xff\xff\xff" 24' 'open_gguf g.gguf'
bad gguf-data-cut nz 'g.gguf' "$G"'; truncate -s 340 g.gguf' 'open_gguf g.gguf'

# ---------------------------------------------------------------- PDFs (pdf_to_md)
P='mkdir pdfs; cp $QL_FIXTURES/pdf/guide.ms.pdf pdfs/good.pdf'
PM='pdf_to_md src=pdfs dst=$OUT'
bad pdf-not-a-pdf 1 'bad.pdf' "$P"'; cp $QL_FIXTURES/pdf/bad-notpdf.pdf pdfs/bad.pdf' "$PM" 'test -s out/good.md && test ! -e out/bad.md'
bad pdf-truncated any 'cut.pdf' "$P"'; cp $QL_FIXTURES/pdf/bad-truncated.pdf pdfs/cut.pdf' "$PM" 'test -s out/good.md'
bad pdf-encrypted 1 'locked.pdf.*(password|encrypted)' "$P"'; cp $QL_FIXTURES/pdf/bad-encrypted.pdf pdfs/locked.pdf' "$PM" 'test -s out/good.md && test ! -e out/locked.md'
bad pdf-empty-file 1 'zero.pdf' "$P"'; : > pdfs/zero.pdf' "$PM" 'test -s out/good.md'
bad pdf-scanned 1 'scan.pdf.*OCR' "$P"'; cp $QL_FIXTURES/pdf/bad-scanned.pdf pdfs/scan.pdf' "$PM" 'test -s out/good.md'
bad pdf-link-loops 0 '' "$P"'; ln -s . pdfs/loop1; ln -s .. pdfs/loop2' "$PM" 'test "$(find out -name "*.md" | wc -l)" = 1'
bad pdf-src-missing nz 'nowhere' '' 'pdf_to_md src=nowhere dst=$OUT'
bad pdf-dst-is-a-file nz 'out' "$P"'; echo "my notes" > out; keep out' "$PM" 'test "$(cat out)" = "my notes"'

# ---------------------------------------------------------------- hostile output names
bad merge-into-a-run nz 'not a previous merge' 'cp -r $IN/run out; chmod -R u+w out; keep out' 'merge model=$IN/model adapter=out/adapter out=$OUT'
bad merge-into-the-base-model nz 'm' 'model m; keep m' 'merge model=m adapter=$IN/run/adapter out=m'
bad merge-into-the-adapter nz 'ad' "$AD"'; keep ad' 'merge model=$IN/model adapter=ad out=ad'
bad export-over-the-model nz 'model.safetensors' 'model m; keep m' 'export_gguf model=m out=m/model.safetensors'
bad export-into-missing-folder nz 'no/such/dir' 'model m' 'export_gguf model=m out=no/such/dir/x.gguf'
bad train-out-is-a-file nz 'out' 'echo "my notes" > out; keep out' 'train'
bad train-out-holds-other-files 0 '' 'mkdir out; echo "thesis" > out/thesis.txt; keep out' 'train'

# ---------------------------------------------------------------- faults: full disk, read-only folders
bad full-disk-checkpoint nz 'checkpoint|No space' 'small_fs out 12 || echo "no tmpfs mount here" > .skip' 'STEPS=4 train save_every=2' 'test ! -e out/checkpoint-2 || tool ckpt out'
bad full-disk-merge nz 'No space|write' 'small_fs out 40 || echo "no tmpfs mount here" > .skip' 'merge model=$IN/model adapter=$IN/run/adapter out=$OUT/merged' 'test ! -e out/merged'
bad full-disk-export nz 'No space|write|x.gguf' 'small_fs out 40 || echo "no tmpfs mount here" > .skip' 'export_gguf model=$IN/model out=$OUT/x.gguf' 'test ! -e out/x.gguf'
bad full-disk-pdf 1 'No space|write|good' 'mkdir pdfs; cp $QL_FIXTURES/pdf/report.latex.pdf pdfs/good.pdf; small_fs out 4 || echo "no tmpfs mount here" > .skip' "$PM" 'test ! -e out/good.md || test -s out/good.md'
bad read-only-train nz 'out' 'ro_fs out || echo "no tmpfs mount here" > .skip' 'train'
bad read-only-merge nz 'out' 'ro_fs out || echo "no tmpfs mount here" > .skip' 'merge model=$IN/model adapter=$IN/run/adapter out=$OUT/merged'
bad read-only-export nz 'x.gguf' 'ro_fs out || echo "no tmpfs mount here" > .skip' 'export_gguf model=$IN/model out=$OUT/x.gguf'
bad read-only-pdf 1 'good' "$P"'; ro_fs out || echo "no tmpfs mount here" > .skip' "$PM"

# ---------------------------------------------------------------- faults: kill -9 and Ctrl-C during each writing stage
# After kill -9 temporaries may remain; the rerun (the check) must clean or ignore them and
# succeed, and every checkpoint must be complete. (A checkpoint-N.tmp of a killed save is
# ignored when checkpoints are chosen and removed when the next run starts.)
bad kill9-checkpoint any '' '' 'STEPS=40 signal_when KILL "$OUT/checkpoint-*" train save_every=1' \
  'tool ckpt out && { last=$(ls out | grep -E "^checkpoint-[0-9]+$" | sort -t- -k2 -n | tail -1) || true; } && STEPS=41 train $(if [ -n "$last" ]; then echo resume=out/$last; else echo overwrite=true; fi) >/dev/null && tool ckpt out'
bad sigint-checkpoint any '' '' 'STEPS=400 signal_when INT "$OUT/checkpoint-*" train save_every=1' 'tool ckpt out && test -z "$(find out -name "*.tmp*")"'
bad kill9-merge any '' '' 'signal_when KILL "$OUT/merged.tmp*" merge model=$IN/big adapter=$IN/big-adapter out=$OUT/merged' \
  'test ! -e out/merged || test -s out/merged/config.json; merge model=$IN/big adapter=$IN/big-adapter out=$C/out/merged >/dev/null && test -z "$(find out -name "*.tmp*")"'
bad sigint-merge any '' '' 'signal_when INT "$OUT/merged.tmp*" merge model=$IN/big adapter=$IN/big-adapter out=$OUT/merged' \
  'test -z "$(find out -name "*.tmp*")" && { test ! -e out/merged || test -s out/merged/model.safetensors; }'
bad kill9-export any '' 'mkdir out' 'signal_when KILL "$OUT/x.gguf.tmp*" export_gguf model=$IN/big out=$OUT/x.gguf' \
  'test ! -e out/x.gguf; export_gguf model=$IN/big out=$C/out/x.gguf >/dev/null && open_gguf out/x.gguf && test -z "$(find out -name "*.tmp*")"'
bad sigint-export any '' 'mkdir out' 'signal_when INT "$OUT/x.gguf.tmp*" export_gguf model=$IN/big out=$OUT/x.gguf' \
  'test -z "$(find out -name "*.tmp*")" && { test ! -e out/x.gguf || open_gguf out/x.gguf; }'
PB='mkdir pdfs; for i in 1 2 3 4 5 6; do cp $QL_FIXTURES/pdf/report.latex.pdf pdfs/r$i.pdf; done'
bad kill9-pdf any '' "$PB" 'signal_when KILL "$OUT/*.tmp*" pdf_to_md src=pdfs dst=$OUT' \
  'pdf_to_md src=pdfs dst=$C/out >/dev/null && test "$(ls out/*.md | wc -l)" = 6 && test -z "$(find out -name "*.tmp*")"'
bad sigint-pdf any '' "$PB" 'signal_when INT "$OUT/*.md" pdf_to_md src=pdfs dst=$OUT' \
  'test -z "$(find out -name "*.tmp*")" && for f in out/*.md; do test -s "$f" || exit 1; done'

# ---------------------------------------------------------------- leftovers of killed runs
bad stale-checkpoint-tmp 0 '' 'cp -r $IN/run out; chmod -R u+w out; mkdir out/checkpoint-9.tmp; echo half > out/checkpoint-9.tmp/trainer_state.json' \
  '$Q -e "print(qlora.train.latest_checkpoint(\"$OUT\"))" | grep -q "checkpoint-2[[:space:]]" && STEPS=4 train resume=$OUT/checkpoint-2' 'tool ckpt out'
bad stale-merge-tmp 0 '' 'mkdir -p out/merged.tmp.2147483000/x; echo half > out/merged.tmp.2147483000/model.safetensors' \
  'merge model=$IN/model adapter=$IN/run/adapter out=$OUT/merged' 'test ! -e out/merged.tmp.2147483000 && test -s out/merged/model.safetensors'
bad stale-export-tmp 0 '' 'mkdir out; echo half > out/x.gguf.tmp.2147483000' 'export_gguf model=$IN/model out=$OUT/x.gguf' \
  'open_gguf out/x.gguf && test ! -e out/x.gguf.tmp.2147483000'
