#!/usr/bin/env python3
"""tests/pdf/score.py — scores a Markdown conversion against the Markdown source
the PDF was made from (the truth). Metrics (see /work/shared/notes/PDF.md):

  text      order-sensitive similarity of normalised word sequences (difflib ratio)
  head      heading F1 ignoring level;  head_lvl: heading F1 requiring the same level
  list      list-item F1;  table: table-row F1;  code: code-block F1
  order     paragraphs in reading order: longest increasing run of the truth
            paragraphs' positions in the output / paragraphs found
  hyph      leftover hyphen splits ("compatibil- ity") in the output
  furn      running-header strings or lone page numbers left in the output

Items match when their normalised texts have difflib ratio >= 0.85 (tables and
code) or 0.9 (headings, list items). Footnote definitions are left out of text.
Usage: score.py TRUTH.md OUTPUT.md [--header "Running Head"]   (prints JSON)
"""
import difflib
import json
import re
import sys


def norm(s):
    return " ".join(re.findall(r"\w+", s.lower()))


def strip_inline(s):
    s = re.sub(r"\[\^[^\]]*\]", " ", s)           # footnote refs
    s = re.sub(r"<!--.*?-->", " ", s)
    s = s.replace("\\", "")
    return s


def parse(md):
    """-> dict of headings [(level, text)], lists [text], rows [text], code [text],
    paras [text], words [w], lone_numbers int, lines [str] (prose lines)"""
    out = dict(headings=[], lists=[], rows=[], code=[], paras=[], words=[], lone_numbers=0, prose=[])
    lines = md.split("\n")
    i = 0
    cur_para = []
    cur_item = None

    def flush():
        nonlocal cur_para, cur_item
        if cur_para:
            out["paras"].append(norm(strip_inline(" ".join(cur_para))))
            cur_para = []
        if cur_item is not None:
            out["lists"].append(norm(strip_inline(cur_item)))
            cur_item = None

    while i < len(lines):
        ln = lines[i]
        if ln.strip().startswith("```"):
            flush()
            j = i + 1
            body = []
            while j < len(lines) and not lines[j].strip().startswith("```"):
                body.append(lines[j]); j += 1
            out["code"].append(norm("\n".join(body)))
            out["words"] += re.findall(r"\w+", "\n".join(body).lower())
            i = j + 1
            continue
        if re.match(r"^\[\^[^\]]+\]:", ln):
            flush(); i += 1
            while i < len(lines) and lines[i].startswith("    "):
                i += 1
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", ln)
        if m:
            flush()
            t = strip_inline(m.group(2))
            out["headings"].append((len(m.group(1)), norm(t)))
            out["words"] += re.findall(r"\w+", t.lower())
            i += 1
            continue
        if ln.lstrip().startswith("|"):
            flush()
            if not re.match(r"^\s*\|[\s:|-]+\|\s*$", ln):
                cells = [c.strip() for c in ln.strip().strip("|").split("|")]
                t = strip_inline(" ".join(cells))
                out["rows"].append(norm(t))
                out["words"] += re.findall(r"\w+", t.lower())
            i += 1
            continue
        m = re.match(r"^(\s*)([-*+]|\d+[.)])\s+(.*)$", ln)
        if m:
            flush()
            t = strip_inline(m.group(3))
            cur_item = t
            out["words"] += re.findall(r"\w+", re.sub(r"[*`_]", "", t).lower())
            i += 1
            continue
        if not ln.strip():
            flush(); i += 1
            continue
        t = strip_inline(ln)
        if cur_item is not None and ln.startswith(" "):
            cur_item += " " + t
        else:
            if cur_item is not None:
                flush()
            cur_para.append(t)
            out["prose"].append(ln.strip())
            if re.match(r"^\s*[-–]?\s*(page\s*)?\d{1,4}\s*[-–]?\s*$", ln, re.I):
                out["lone_numbers"] += 1
        out["words"] += re.findall(r"\w+", re.sub(r"[*`_]", "", t).lower())
        i += 1
    flush()
    return out


def f1(truth, pred, thr, key=lambda x: x, same=lambda a, b: True):
    used = [False] * len(pred)
    tp = 0
    for t in truth:
        best, bi = 0.0, -1
        for j, p in enumerate(pred):
            if used[j] or not same(t, p):
                continue
            r = 1.0 if key(t) == key(p) else difflib.SequenceMatcher(None, key(t), key(p), autojunk=False).ratio()
            if r > best:
                best, bi = r, j
        if bi >= 0 and best >= thr:
            used[bi] = True
            tp += 1
    if not truth and not pred:
        return 1.0
    prec = tp / len(pred) if pred else 0.0
    rec = tp / len(truth) if truth else 0.0
    return 0.0 if tp == 0 else 2 * prec * rec / (prec + rec)


def order_score(truth_paras, out_words):
    text = " " + " ".join(out_words) + " "
    pos = []
    for p in truth_paras:
        w = p.split()
        if len(w) < 6:
            continue
        probe = " " + " ".join(w[:6]) + " "
        k = text.find(probe)
        if k >= 0:
            pos.append(k)
    if not pos:
        return 0.0
    # longest increasing subsequence
    import bisect
    tails = []
    for x in pos:
        i = bisect.bisect_left(tails, x)
        if i == len(tails):
            tails.append(x)
        else:
            tails[i] = x
    return len(tails) / len(pos)


def score(truth_md, out_md, header=None):
    T, O = parse(truth_md), parse(out_md)
    text = difflib.SequenceMatcher(None, T["words"], O["words"], autojunk=False).ratio()
    res = dict(
        text=round(text, 4),
        head=round(f1([h[1] for h in T["headings"]], [h[1] for h in O["headings"]], 0.9), 4),
        head_lvl=round(f1(T["headings"], O["headings"], 0.9, key=lambda h: h[1],
                          same=lambda a, b: a[0] == b[0]), 4),
        list=round(f1(T["lists"], O["lists"], 0.9), 4),
        table=round(f1(T["rows"], O["rows"], 0.85), 4),
        code=round(f1(T["code"], O["code"], 0.85), 4),
        order=round(order_score(T["paras"], O["words"]), 4),
        hyph=len(re.findall(r"[a-z]- [a-z]", out_md)) - len(re.findall(r"[a-z]- [a-z]", truth_md)),
        furn=O["lone_numbers"] + (sum(1 for l in O["prose"] + [h for _, h in O["headings"]]
                                      if header and norm(header) in norm(l)) if header else 0),
    )
    res["hyph"] = max(0, res["hyph"])
    return res


if __name__ == "__main__":
    args = sys.argv[1:]
    header = None
    if "--header" in args:
        k = args.index("--header"); header = args[k + 1]; del args[k:k + 2]
    truth = open(args[0], encoding="utf-8").read()
    out = open(args[1], encoding="utf-8").read()
    print(json.dumps(score(truth, out, header)))
