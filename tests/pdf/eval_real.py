#!/usr/bin/env python3
"""tests/pdf/eval_real.py — scores our conversion (bin/pdf_tool md) and pymupdf4llm's
on the real PDFs of tests/pdf/real.tsv (fetched by tests/pdf/get_real.sh DIR), with
what can be scored without hand-written truth, and writes the table into
tests/pdf/RESULTS.md (the part after "## Real PDFs").

Metrics, per file (MuPDF's own text and outline, through PyMuPDF, are the reference):
  outline   outline recall: outline entries found as a Markdown heading
  level     of those, the share whose heading level equals the outline level
  words     word coverage: share of the words of MuPDF's plain text (as a multiset,
            running heads and footers excluded) found in the Markdown
  furn      running heads/footers left in the output. The furniture of a file is every
            line text (digits and roman numerals as '#') standing in the top or bottom
            10% of at least 3 pages and 5% of them, at least 6 letters long; a line of
            the output that is one of them (or holds one with a varying number, e.g.
            "Chapter 3: Basic Shell Features 7" inside a paragraph) counts, less the
            times the same text stands as a body line of the PDF (a title that is also
            the running head), and less, for headings, the times the text is an entry
            of the outline (a slide deck's sections, named only in its navigation
            bar, come out once each as headings: structure, not furniture)
  lone      lone page numbers: output lines that are only "12", "xii", "- 12 -",
            "12 / 92", "Page 12" (outside code blocks)
  toctab    table rows that hold an outline title (a table of contents or numbered
            headings rendered as tables)
  s         seconds for the conversion, one core
Usage: python tests/pdf/eval_real.py DIR [--no-peer] [--keep OUT] [--only NAME,...] [--no-write] [--tool PDF_TOOL]
       [--peer-layout]
       [--cache FILE]  (the peer's scores kept in FILE, reused while the file and PyMuPDF stay the same)
Needs bin/pdf_tool (or bin-cpu/pdf_tool) and a Python with pymupdf (and pymupdf4llm
for the peer: `pip install pymupdf4llm`; with PyMuPDF 2.x the module ships in pymupdf).
"""
import collections
import datetime
import difflib
import json
import os
import re
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.abspath(os.path.join(here, "..", ".."))
ROMAN = re.compile(r"^[ivxlc]+$")
LONE = re.compile(r"^\s*[-–—]?\s*((?i:page)\s*)?(\d{1,4}|[ivxlc]{1,7}|[IVXLC]{2,7})(\s*(/|of)\s*\d{1,4})?\s*[-–—]?\s*$")


def words(s):
    return re.findall(r"\w+", s.lower())


def fkey(s):
    """furniture key: lowercase words, numbers and roman numerals as '#'"""
    out = []
    for w in words(s):
        if w.isdigit() or (ROMAN.match(w) and len(w) <= 7 and w not in ("l", "c", "cl", "li", "xl")):
            w = "#"
        if w == "#" and out and out[-1] == "#":
            continue
        out.append(w)
    return " ".join(out)


def hkey(s):
    """heading key: words without a leading section number"""
    s = re.sub(r"[*_`#]", " ", s).strip()
    s = re.sub(r"^(chapter|section|appendix)\s+[\w.]+\s*[:.]?\s+", "", s, flags=re.I)
    s = re.sub(r"^([0-9]+|[A-Z])(\.[0-9]+)*\.?\s+", "", s)
    return " ".join(words(s))


def reference(doc):
    """-> (Counter of words without furniture, set of furniture keys, Counter of body line keys)"""
    pages = []
    for pg in doc:
        h = pg.rect.height or 1
        lines = []
        rows = []   # band lines on one baseline make one row: [y1, [(x0, text)]]
        d = pg.get_text("dict")
        for b in d["blocks"]:
            for ln in b.get("lines", []):
                t = " ".join(sp["text"] for sp in ln["spans"]).strip()
                if not t:
                    continue
                x0, y0, y1 = ln["bbox"][0], ln["bbox"][1], ln["bbox"][3]
                if y1 <= 0.10 * h or y0 >= 0.90 * h:
                    for r in rows:
                        if abs(r[0] - y1) < 2:
                            r[1].append((x0, t))
                            break
                    else:
                        rows.append([y1, [(x0, t)]])
                else:
                    lines.append((t, False))
        for r in rows:
            lines.append((" ".join(t for _, t in sorted(r[1])), True))
        pages.append(lines)
    cnt = collections.Counter()
    for lines in pages:
        seen = set()
        for t, band in lines:
            k = fkey(t)
            if band and len(re.sub(r"[^a-z]", "", k)) >= 6 and k not in seen:
                seen.add(k)
                cnt[k] += 1
    need = max(3, int(0.05 * len(pages) + 0.999))
    furn = {k for k, c in cnt.items() if c >= need}
    ref = collections.Counter()
    body = collections.Counter()
    for lines in pages:
        for t, band in lines:
            k = fkey(t)
            if band and (k in furn or LONE.match(t)):
                continue
            if not band:
                body[k] += 1
            ref.update(words(t))
    return ref, furn, body


def md_lines(md):
    """-> list of (kind, text): kind in head<level>, row, code, text"""
    out = []
    code = False
    for ln in md.split("\n"):
        if ln.strip().startswith("```"):
            code = not code
            continue
        if code:
            out.append(("code", ln))
            continue
        m = re.match(r"^(#{1,6})\s+(.*)$", ln)
        if m:
            out.append(("head%d" % len(m.group(1)), m.group(2)))
        elif ln.lstrip().startswith("|"):
            if not re.match(r"^\s*\|[\s:|-]+\|\s*$", ln):
                out.append(("row", ln))
        elif ln.strip():
            out.append(("text", ln))
    return out


def score(doc, md, ref, furn, body):
    lines = md_lines(md)
    toc = doc.get_toc(simple=True)
    heads = [(int(k[4:]), hkey(t)) for k, t in lines if k.startswith("head")]
    byk = collections.defaultdict(list)
    for i, (lv, k) in enumerate(heads):
        byk[k].append(i)
    used = set()
    found = same = 0
    for lv, title, _pg in toc:
        k = hkey(title)
        if not k:
            continue
        hit = None
        for i in byk.get(k, []):
            if i not in used:
                hit = i
                break
        if hit is None:
            for i, (hl, hk) in enumerate(heads):
                if i in used or not hk or abs(len(hk) - len(k)) > 0.3 * len(k) + 3:
                    continue
                if hk.endswith(" " + k) or difflib.SequenceMatcher(None, k, hk, autojunk=False).ratio() >= 0.9:
                    hit = i
                    break
        if hit is not None:
            used.add(hit)
            found += 1
            same += heads[hit][0] == lv
    ntoc = sum(1 for t in toc if hkey(t[1]))
    # furniture left: whole lines, or keys with a varying number inside a line
    leak = collections.Counter()
    hleak = collections.Counter()   # of those, headings
    okeys = collections.Counter(fkey(t[1]) for t in toc)
    varying = [k for k in furn if "#" in k and len(k.split()) >= 3]
    for kind, t in lines:
        if kind == "code":
            continue
        plain = re.sub(r"[|*`_#>\\]", " ", t)
        k = fkey(plain)
        if k in furn:
            leak[k] += 1
            hleak[k] += kind.startswith("head")
            continue
        for f in varying:
            if f in k:
                leak[f] += 1
    furn_n = sum(max(0, c - body.get(k, 0) - min(hleak[k], okeys[k])) for k, c in leak.items())
    lone = sum(1 for kind, t in lines if kind in ("text",) and LONE.match(re.sub(r"[*_\\]", "", t)))
    titles = {hkey(t[1]) for t in toc if len(hkey(t[1])) >= 4}
    toctab = 0
    for kind, t in lines:
        if kind != "row":
            continue
        cells = [hkey(c) for c in t.strip().strip("|").split("|")]
        if any(c in titles for c in cells) or hkey(" ".join(c for c in t.strip().strip("|").split("|"))) in titles:
            toctab += 1
    got = collections.Counter(words(re.sub(r"[*_`]", "", md)))
    inter = sum(min(c, got[w]) for w, c in ref.items())
    total = sum(ref.values()) or 1
    return dict(outline=found / ntoc if ntoc else None, level=same / found if found else None,
                words=inter / total, furn=furn_n, lone=lone, toctab=toctab)


def fmt(v, m):
    if v is None:
        return "–"
    if m in ("furn", "lone", "toctab"):
        return "%d" % v
    if m == "s":
        return "%.2f" % v
    return "%.2f" % v


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    d = args[0]
    peer = "--no-peer" not in args
    keep = args[args.index("--keep") + 1] if "--keep" in args else None
    only = set(args[args.index("--only") + 1].split(",")) if "--only" in args else None
    write = "--no-write" not in args
    cache_file = args[args.index("--cache") + 1] if "--cache" in args else None
    cache = json.load(open(cache_file)) if cache_file and os.path.exists(cache_file) else {}
    if keep:
        os.makedirs(keep, exist_ok=True)
    tool = next((p for p in (os.path.join(root, "bin", "pdf_tool"), os.path.join(root, "bin-cpu", "pdf_tool"))
                 if os.path.exists(p)), None)
    if not tool:
        sys.exit("build bin/pdf_tool first (./setup.sh)")
    import pymupdf
    layout = "--peer-layout" in args
    if peer:
        import pymupdf4llm
        if hasattr(pymupdf4llm, "use_layout"):
            # PyMuPDF 2.x's pymupdf4llm defaults to a layout model (a GNN, ~1 s a
            # page here); without --peer-layout the peer is its heuristic path
            # (font sizes, bullets, tables by vector lines), as in 0.x/1.x
            pymupdf4llm.use_layout(layout)
    tool = args[args.index("--tool") + 1] if "--tool" in args else tool
    entries = []
    for ln in open(os.path.join(here, "real.tsv"), encoding="utf-8"):
        if ln.startswith("#") or not ln.strip():
            continue
        f = ln.rstrip("\n").split("\t")
        if only and f[0] not in only:
            continue
        entries.append(f)
    os.sched_setaffinity(0, {0})
    METRICS = ["outline", "level", "words", "furn", "lone", "toctab", "s"]
    rows = []
    for name, pkg, ver, path, _sum, producer in entries:
        f = os.path.join(d, name + ".pdf")
        if not os.path.exists(f):
            print("missing", f, "(tests/pdf/get_real.sh DIR)", file=sys.stderr)
            continue
        doc = pymupdf.open(f)
        ref, furn, body = reference(doc)
        t0 = time.perf_counter()
        r = subprocess.run(["taskset", "-c", "0", tool, "md", f], capture_output=True, text=True, timeout=600)
        t_ours = time.perf_counter() - t0
        ours = r.stdout if r.returncode == 0 else ""
        so = score(doc, ours, ref, furn, body)
        so["s"] = t_ours
        sp = None
        ck = "%s %s %s %s" % (name, _sum, pymupdf.VersionBind, "layout" if layout else "heuristic")
        if peer and ck in cache:
            sp = cache[ck]
        elif peer:
            t0 = time.perf_counter()
            try:
                pm = pymupdf4llm.to_markdown(doc, show_progress=False)
            except Exception as e:  # the peer failing is a result too
                print(name, "pymupdf4llm failed:", e, file=sys.stderr)
                pm = ""
            t_peer = time.perf_counter() - t0
            sp = score(doc, pm, ref, furn, body)
            sp["s"] = t_peer
            cache[ck] = sp
            if cache_file:
                json.dump(cache, open(cache_file, "w"), indent=1)
            if keep:
                open(os.path.join(keep, name + ".pymupdf4llm.md"), "w").write(pm)
        if keep:
            open(os.path.join(keep, name + ".ours.md"), "w").write(ours)
        rows.append((name, producer, doc.page_count, len(doc.get_toc()), so, sp))
        print(name, doc.page_count, " ".join("%s=%s" % (m, fmt(so[m], m)) for m in METRICS),
              ("| peer " + " ".join("%s=%s" % (m, fmt(sp[m], m)) for m in METRICS)) if sp else "", flush=True)
    lines = []
    lines.append("## Real PDFs\n")
    lines.append("Generated by `tests/pdf/eval_real.py` on %s over the %d PDFs of `tests/pdf/real.tsv` "
                 "(Debian 12 documentation packages; `tests/pdf/get_real.sh DIR` fetches them). "
                 "No hand-written truth: MuPDF's outline and plain text are the reference "
                 "(metrics in the script's header). furn, lone and toctab are counts (0 is the goal); "
                 "s is seconds on one core, open included for ours, excluded for the peer.\n"
                 % (datetime.date.today().isoformat(), len(rows)))
    if peer:
        lines.append("Peer: pymupdf4llm %s (PyMuPDF %s), `pymupdf4llm.to_markdown(doc)`, %s.\n"
                     % (getattr(pymupdf4llm, "__version__", "?"), pymupdf.VersionBind,
                        "its layout model (`use_layout(True)`)" if layout else
                        "its heuristic path (`use_layout(False)`; the default layout model runs ~1 s a page)"))
    lines.append("| file | producer | pages | tool | " + " | ".join(METRICS) + " |")
    lines.append("|" + "---|" * (4 + len(METRICS)))
    for name, producer, np_, ntoc, so, sp in rows:
        for tn, s in (("ours", so), ("pymupdf4llm", sp)):
            if s is None:
                continue
            lines.append("| %s | %s | %d | %s | %s |" % (name, producer, np_, tn, " | ".join(fmt(s[m], m) for m in METRICS)))
    lines.append("")
    lines.append("Totals (outline, level, words: mean over the files that have them; counts and seconds: sums):\n")
    lines.append("| tool | " + " | ".join(METRICS) + " |")
    lines.append("|" + "---|" * (1 + len(METRICS)))
    for idx, tn in ((4, "ours"), (5, "pymupdf4llm")):
        ss = [r[idx] for r in rows if r[idx] is not None]
        if not ss:
            continue
        cells = []
        for m in METRICS:
            vals = [s[m] for s in ss if s[m] is not None]
            if m in ("furn", "lone", "toctab", "s"):
                cells.append(fmt(sum(vals), m))
            else:
                cells.append(fmt(sum(vals) / len(vals) if vals else None, m))
        lines.append("| %s | %s |" % (tn, " | ".join(cells)))
    lines.append("")
    txt = "\n".join(lines) + "\n"
    print(txt)
    if write and not only:
        p = os.path.join(here, "RESULTS.md")
        old = open(p, encoding="utf-8").read() if os.path.exists(p) else ""
        k = old.find("## Real PDFs")
        old = old[:k].rstrip("\n") + "\n\n" if k >= 0 else old.rstrip("\n") + "\n\n"
        open(p, "w", encoding="utf-8").write(old + txt)


if __name__ == "__main__":
    main()
