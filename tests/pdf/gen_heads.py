#!/usr/bin/env python3
"""tests/pdf/gen_heads.py — writes tests/pdf/src/heads.ms, a groff ms book whose
pages carry running heads and footers as real books set them (issue 9):
  - front matter numbered in roman numerals (footer "iii / 12");
  - odd pages: "Chapter N: Title" left, the page number right (Texinfo's style);
  - even pages: the page number left, the book's title right; the title also
    stands on page 1, larger and lower (acmart's title that runs as a head);
  - every page's footer "N / M";
  - a chapter's first page has no head.
The prose is made of a fixed word list with a fixed seed, so the file is the same
on every run. make_fixtures.sh renders it with groff -ms -Tpdf (gropdf).
Usage: python3 tests/pdf/gen_heads.py [TOTAL_PAGES]"""
import os
import random
import sys

random.seed(9)
W = ("the a machine quiet gear wheel axle spring lever valve pump engine motor frame shaft bearing belt pulley "
     "chain turns moves holds carries lifts presses slows keeps drives joins measures balances oil brass steel "
     "iron slowly gently firmly evenly while because after before when every each small large old new careful "
     "worker builder reader plan drawing note rule part piece side edge corner centre surface weight force load").split()


def sent():
    w = [random.choice(W) for _ in range(random.randint(8, 18))]
    return " ".join(w).capitalize() + "."


def para():
    return ".PP\n" + " ".join(sent() for _ in range(random.randint(5, 8)))


total = sys.argv[1] if len(sys.argv) > 1 else "12"
chapters = ["Basics of Quiet Machines", "Wheels and Axles", "Springs and Levers", "Pumps and Valves"]
out = [r'''.\" tests/pdf/src/heads.ms — written by tests/pdf/gen_heads.py (see there); do not edit.
.nr PS 10
.nr VS 12
.nr LL 5i
.ds total %s
.ds chap
.nr nohead 1
.de PT
.  ie \\n[nohead] .nr nohead 0
.  el \{\
.    ie o .tl '\\*[chap]''\\n%%'
.    el .tl '\\n%%''The Handbook of Quiet Machines'
.  \}
..
.de BT
.  tl ''\\n%% / \\*[total]''
..
.af %% i
.TL
The Handbook of Quiet Machines
.AU
A. Writer
.SH
Preface''' % total]
for _ in range(16):
    out.append(para())
for i, c in enumerate(chapters, 1):
    out.append(".ds chap Chapter %d: %s\n.nr nohead 1" % (i, c))
    if i == 1:
        out.append(".pn 1")
    out.append(".bp")
    if i == 1:
        out.append(".af % 1")
    out.append(".NH 1\n%s" % c)
    for _ in range((20, 26, 14, 22)[i - 1]):
        out.append(para())
here = os.path.dirname(os.path.abspath(__file__))
open(os.path.join(here, "src", "heads.ms"), "w").write("\n".join(out) + "\n")
