#!/usr/bin/env python3
"""gen_tokenizer.py — golden ids for the tokenizer tests, from HF `tokenizers`.

Builds the test corpus deterministically from tests/fixtures/tokenizers/seed.txt
(the same recipe is re-implemented in tests/c/test_tokenizer.c, so the corpus
itself is never committed), encodes every record with the reference library
and writes, per tokenizer:

  tests/fixtures/tokenizers/<name>.hashes   binary: b"QLTH", u32 version=1,
      u32 nrec, then per record u64 FNV-1a of the ids (each id as 4 bytes
      little-endian), the low 32 bits of the FNV-1a of HF
      decode(ids, skip_special_tokens=False) as UTF-8, u32 number of ids.
  tests/fixtures/tokenizers/cases.json / cases.lua   a few hand-picked texts and
      the first corpus records with their full ids (add_special False and
      True) and decoded text, for readable failures and for the Lua tests.

Run:  /opt/refenv/bin/python tests/gen/gen_tokenizer.py [--corpus OUT.txt]
(--corpus also writes the corpus, records separated by NUL, for the benchmark.)
"""
import json
import os
import struct
import sys

from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, '..', 'fixtures', 'tokenizers')
NAMES = ['qwen2.5', 'qwen3', 'llama3.1', 'mistral-7b', 'gpt2']
SEED = 20241126
NREC = 16000

DIGITS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "⁰¹²³⁴⁵⁶⁷⁸⁹", "①②③④⑤⑥⑦⑧⑨⑩"]
WS = [" ", " ", " ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2003", "\u200b", "\x0b", "\x0c",
      "\u0085", "\u2028"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
            "<|start_header_id|>", "<|end_header_id|>", "<s>", "</s>", "<unk>", "<think>", "</think>",
            "<tool_call>", "<|fim_prefix|>", "<|reserved_special_token_5|>", "<|im_start", "<|endoftext",
            "< s>", "<<s>>"]
PUNCT = ["'s", "'S", "'ll", "'RE", "'ve", "'ſ", "...", "!!", "?!", "--", "```", "\"\"", "'", "::", "->", "=>",
         "{}", "()", "[]", "</", "/>", "#", "@", "$", "%", "^", "&&", "||", "ſ", "''", "'''", " '", "\\n", "\\\\"]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇺🇸", "❤️", "🏳️‍🌈", "🤖", "🔥🔥🔥", "✨", "🧑🏿‍💻", "☕", "⚡️"]
RANGES = [(0x0, 0x1F), (0x20, 0x7E), (0x7F, 0x9F), (0xA0, 0xFF), (0x100, 0x17F), (0x300, 0x36F),
          (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
          (0x1100, 0x1112), (0x1161, 0x1175), (0x11A8, 0x11C2), (0xAC00, 0xD7A3), (0x2000, 0x206F),
          (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xFE00, 0xFE0F), (0xFF00, 0xFFEF), (0xFFF0, 0xFFFD),
          (0x1F300, 0x1FAFF), (0x1D400, 0x1D7FF), (0xE000, 0xE0FF), (0x20000, 0x2A6DF)]
SEPS = ["", " ", " ", "\n", "  ", "\t", "\n\n"]

M64 = (1 << 64) - 1


class Rng:
    """SplitMix64; below(n) = next() % n."""

    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        return self.next() % n


def corpus():
    seed = open(os.path.join(FIX, 'seed.txt'), encoding='utf-8').read().split('\n')
    if seed and seed[-1] == '':
        seed.pop()
    nl = len(seed)
    r = Rng(SEED)
    recs = []
    for _ in range(NREC):
        text = []
        for _ in range(1 + r.below(12)):
            k = r.below(16)
            if k < 7:
                s = seed[r.below(nl)]
            elif k == 7:
                a = r.below(nl)
                s = '\n'.join(seed[a:a + 1 + r.below(8)])
            elif k == 8:
                d = DIGITS[r.below(len(DIGITS))]
                s = ''.join(d[r.below(10)] for _ in range(1 + r.below(20)))
            elif k == 9:
                s = ''.join(WS[r.below(len(WS))] for _ in range(1 + r.below(6)))
            elif k == 10:
                s = SPECIALS[r.below(len(SPECIALS))]
            elif k == 11:
                cs = []
                for _ in range(1 + r.below(10)):
                    lo, hi = RANGES[r.below(len(RANGES))]
                    cs.append(chr(lo + r.below(hi - lo + 1)))
                s = ''.join(cs)
            elif k == 12:
                s = PUNCT[r.below(len(PUNCT))]
            elif k == 13:
                s = EMOJI[r.below(len(EMOJI))]
            else:
                line = seed[r.below(nl)]
                a = r.below(len(line) + 1)
                s = line[a:a + r.below(41)]
            text.append(s)
            text.append(SEPS[r.below(len(SEPS))])
        recs.append(''.join(text))
    return recs


def fnv(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & M64
    return h


CASES = ["Hello world! How are you?", "\n\n\n", "<|im_start|>user\nhi<|im_end|>", "", " ", "  ", "a",
         "Hello", " Hello", "  Hello  ", "I'm sure they'll've done it", "12345678901", "naïve café",
         "nai\u0308ve cafe\u0301", "こんにちは世界", "안녕하세요", "🤖🔥 emoji", "tab\there", "line\r\nbreak",
         "<s> hello </s>", "<|begin_of_text|>Hi<|eot_id|>", "ſ's 'ſ", "\u00a0\u3000x", "x  \n  y",
         "def f(x):\n    return x  # comment\n", "<think>\nok\n</think>\n\nAnswer"]


def main():
    recs = corpus()
    if '--corpus' in sys.argv:
        with open(sys.argv[sys.argv.index('--corpus') + 1], 'wb') as f:
            f.write(b'\0'.join(r.encode('utf-8') for r in recs))
    total = sum(len(r.encode('utf-8')) for r in recs)
    print(f'corpus: {len(recs)} records, {total} bytes')
    cases = {}
    for name in NAMES:
        tok = Tokenizer.from_file(os.path.join(FIX, name, 'tokenizer.json'))
        encs = tok.encode_batch(recs, add_special_tokens=False)
        out = [b'QLTH', struct.pack('<II', 1, len(recs))]
        for e in encs:
            ids = e.ids
            dec = tok.decode(ids, skip_special_tokens=False)
            out.append(struct.pack('<QII', fnv(struct.pack(f'<{len(ids)}I', *ids)),
                                   fnv(dec.encode('utf-8')) & 0xFFFFFFFF, len(ids)))
        with open(os.path.join(FIX, name + '.hashes'), 'wb') as f:
            f.write(b''.join(out))
        cl = []
        for t in CASES + recs[:6]:
            ids = tok.encode(t, add_special_tokens=False).ids
            cl.append({'text': t, 'ids': ids,
                       'ids_special': tok.encode(t, add_special_tokens=True).ids,
                       'decoded': tok.decode(ids, skip_special_tokens=False)})
        cases[name] = cl
        print(f'{name}: {sum(len(e.ids) for e in encs)} ids')
    with open(os.path.join(FIX, 'cases.json'), 'w', encoding='utf-8') as f:
        json.dump(cases, f, ensure_ascii=False, indent=0)

    def lstr(s):
        o = []
        for b in s.encode('utf-8'):
            if 32 <= b < 127 and b not in (34, 92):
                o.append(chr(b))
            else:
                o.append('\\%03d' % b)
        return '"' + ''.join(o) + '"'
    with open(os.path.join(FIX, 'cases.lua'), 'w') as f:
        f.write('-- generated by tests/gen/gen_tokenizer.py from HF tokenizers; do not edit\nreturn {\n')
        for name in NAMES:
            f.write(f'  ["{name}"] = {{\n')
            for c in cases[name]:
                f.write('    { text = %s, ids = {%s}, ids_special = {%s}, decoded = %s },\n' % (
                    lstr(c['text']), ','.join(map(str, c['ids'])), ','.join(map(str, c['ids_special'])),
                    lstr(c['decoded'])))
            f.write('  },\n')
        f.write('}\n')


if __name__ == '__main__':
    main()
