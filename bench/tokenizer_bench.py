#!/usr/bin/env python3
"""tokenizer_bench.py — single-thread MB/s of qlora.tokenizer vs HF tokenizers
(and tiktoken for GPT-2), plus multi-thread scaling, on the test corpus.

  /opt/refenv/bin/python bench/tokenizer_bench.py [--threads 1,2] [--out bench/RESULTS-tokenizer.md]

The corpus is the one of tests/gen/gen_tokenizer.py (prose in many languages,
code, CJK, emoji, whitespace runs, digits, special-token strings; ~4.2 MB).
tiktoken cannot download its gpt2 files offline, so its Encoding is built from
the GPT-2 tokenizer.json: mergeable_ranks = byte strings of the vocabulary
(ids are the ranks), special token <|endoftext|> = 50256, GPT-2's regex.
qlora is timed through `bin/qlora bench/tokenizer.lua` (Lua call overhead and
the Lua id tables included); HF through Tokenizer.encode_batch with
RAYON_NUM_THREADS=1 (the ids as Python lists included); tiktoken through
encode_ordinary_batch(num_threads=1).
"""
import datetime
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'gen'))
NAMES = ['qwen2.5', 'qwen3', 'llama3.1', 'mistral-7b', 'gpt2']
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def best_of(fn, reps=3):
    best = 1e9
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def tiktoken_gpt2():
    import json
    import tiktoken
    j = json.load(open(os.path.join(ROOT, 'tests/fixtures/tokenizers/gpt2/tokenizer.json'), encoding='utf-8'))
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b); cs.append(256 + n); n += 1
    dec = {chr(c): b for b, c in zip(bs, cs)}
    ranks = {bytes(dec[ch] for ch in tok): i for tok, i in j['model']['vocab'].items() if tok != '<|endoftext|>'}
    return tiktoken.Encoding('gpt2-local', pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={'<|endoftext|>': 50256})


def run_qlora(corpus, threads):
    env = dict(os.environ, QL_THREADS=str(threads))
    out = subprocess.run([os.path.join(ROOT, 'bin/qlora'), 'bench/tokenizer.lua', corpus] + NAMES, cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4 and p[0] in NAMES:
            res[p[0]] = (float(p[1]), float(p[2]), int(p[3]))
    return res


def main():
    threads = [int(x) for x in (sys.argv[sys.argv.index('--threads') + 1] if '--threads' in sys.argv else '1,2').split(',')]
    out_md = sys.argv[sys.argv.index('--out') + 1] if '--out' in sys.argv else None
    import gen_tokenizer
    recs = gen_tokenizer.corpus()
    recs = [r.replace('\0', ' ') for r in recs]  # records are NUL-separated in the file
    corpus = '/tmp/qlora_tok_corpus.bin'
    with open(corpus, 'wb') as f:
        f.write(b'\0'.join(r.encode('utf-8') for r in recs))
    mb = sum(len(r.encode('utf-8')) for r in recs) / 1e6
    os.environ['RAYON_NUM_THREADS'] = '1'
    from tokenizers import Tokenizer
    hf = {}
    for name in NAMES:
        tok = Tokenizer.from_file(os.path.join(ROOT, 'tests/fixtures/tokenizers', name, 'tokenizer.json'))
        hf[name] = mb / best_of(lambda: tok.encode_batch(recs, add_special_tokens=False))
    enc = tiktoken_gpt2()
    tk = mb / best_of(lambda: enc.encode_ordinary_batch(recs, num_threads=1))
    ql = {t: run_qlora(corpus, t) for t in threads}
    lines = []
    lines.append(f'Date: {datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}; host: {os.uname().nodename}, '
                 f'{os.cpu_count()} CPUs (shared with other jobs: treat as noisy)')
    lines.append(f'Command: /opt/refenv/bin/python bench/tokenizer_bench.py --threads {",".join(map(str, threads))}')
    lines.append(f'Corpus: tests/gen/gen_tokenizer.py corpus, {len(recs)} records, {mb:.2f} MB')
    lines.append('')
    lines.append('| tokenizer | qlora 1 thread MB/s | HF tokenizers 1 thread MB/s | speedup | tiktoken MB/s |'
                 + ''.join(f' qlora batch {t}T MB/s |' for t in threads))
    lines.append('|---|---:|---:|---:|---:|' + '---:|' * len(threads))
    for name in NAMES:
        q1 = ql[threads[0]][name][0]
        lines.append(f'| {name} | {q1:.1f} | {hf[name]:.2f} | {q1 / hf[name]:.1f}x | '
                     + (f'{tk:.1f}' if name == 'gpt2' else '') + ' |'
                     + ''.join(f' {ql[t][name][1]:.1f} |' for t in threads))
    text = '\n'.join(lines)
    print(text)
    if out_md:
        with open(out_md, 'a') as f:
            f.write(text + '\n\n')


if __name__ == '__main__':
    main()
