#!/usr/bin/env bash
# tests/pdf/make_fixtures.sh — renders tests/pdf/src/*.md into PDFs through
# several Debian producers and writes them to tests/fixtures/pdf/:
#   NAME.latex.pdf    pandoc + pdflatex, one column, running header (fancyhdr)
#   NAME.latex2.pdf   pandoc + pdflatex, two columns (longtable -> tabular)
#   NAME.ms.pdf       pandoc -t ms, groff (pdfroff), "- N -" page headers
#   NAME.odt.pdf      pandoc -> docx -> soffice --headless --convert-to pdf
#   NAME.wk.pdf       pandoc -> html -> wkhtmltopdf, header and page footer
# and for each one NAME.PRODUCER.noout.pdf, the same file with the outline
# removed (PyMuPDF from /opt/refenv). Also a few broken files for error tests,
# groff-only sources (src/*.ms -> NAME.ms.pdf), and bad-unmapped.pdf (text
# drawn with a font that has no Unicode mapping, written by plain python3).
# Needs: pandoc texlive-latex-base texlive-latex-recommended
# texlive-fonts-recommended groff (gropdf, not only groff-base) wkhtmltopdf libreoffice-writer(-nogui)
# poppler-utils; python3 with PyMuPDF (pip install pymupdf); for the LaTeX
# sources (src/*.PRODUCER.tex): texlive-latex-recommended (beamer)
# texlive-pictures (pgf). CI does not run this: the PDFs are committed.
# Arguments pick parts (default: all): md (the pandoc producers and their
# outline-free copies), bad (broken inputs), ms (groff sources), tex (LaTeX
# sources), unmapped.
set -euo pipefail
parts="${*:-md bad ms tex unmapped}"
want() { [[ " $parts " == *" $1 "* ]]; }
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../fixtures/pdf"
py="${PYTHON:-/opt/refenv/bin/python}"
mkdir -p "$out"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
export SOURCE_DATE_EPOCH=1700000000 QT_QPA_PLATFORM=offscreen
HEADER="Evaluation Corpus Draft"

for src in "$here"/src/*.md; do
  want md || break
  name="$(basename "$src" .md)"
  echo "== $name"
  # latex, one column, with a constant running header
  cat > "$tmp/hdr.tex" <<TEX
\usepackage{fancyhdr}
\pagestyle{fancy}
\fancyhf{}
\fancyhead[C]{\small $HEADER}
\fancyfoot[C]{\thepage}
TEX
  pandoc "$src" -s -t latex -H "$tmp/hdr.tex" -o "$tmp/$name.tex"
  (cd "$tmp" && pdflatex -interaction=batchmode "$name.tex" >/dev/null && pdflatex -interaction=batchmode "$name.tex" >/dev/null)
  cp "$tmp/$name.pdf" "$out/$name.latex.pdf"
  # latex, two columns: longtable is not allowed there, make it a tabular
  pandoc "$src" -s -t latex -V classoption=twocolumn -o "$tmp/$name-2.tex"
  sed -i -e 's/\\begin{longtable}\[\]{\(.*\)}$/\\begin{center}\\begin{tabular}{\1}/' \
         -e 's/\\end{longtable}/\\end{tabular}\\end{center}/' \
         -e '/^\\endhead$/d' -e '/^\\endfirsthead$/d' -e '/^\\endfoot$/d' -e '/^\\endlastfoot$/d' "$tmp/$name-2.tex"
  (cd "$tmp" && pdflatex -interaction=batchmode "$name-2.tex" >/dev/null && pdflatex -interaction=batchmode "$name-2.tex" >/dev/null)
  cp "$tmp/$name-2.pdf" "$out/$name.latex2.pdf"
  # groff ms
  pandoc "$src" -s -t ms --pdf-engine=pdfroff -o "$out/$name.ms.pdf"
  # LibreOffice
  pandoc "$src" -o "$tmp/$name.docx"
  (cd "$tmp" && soffice --headless --convert-to pdf "$name.docx" >/dev/null 2>&1)
  cp "$tmp/$name.pdf" "$out/$name.odt.pdf"
  # wkhtmltopdf with a running header and page-number footer
  pandoc "$src" -s -t html5 --metadata pagetitle="$name" --pdf-engine=wkhtmltopdf \
    --pdf-engine-opt=--header-center --pdf-engine-opt="$HEADER" \
    --pdf-engine-opt=--footer-center --pdf-engine-opt="[page]" \
    --pdf-engine-opt=--header-font-size --pdf-engine-opt=9 \
    --pdf-engine-opt=--footer-font-size --pdf-engine-opt=9 \
    -o "$out/$name.wk.pdf" 2>/dev/null
done

# outline-free copies
want md && "$py" - "$out" <<'PY'
import sys, glob, os, fitz
for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.pdf"))):
    if ".noout." in p or os.path.basename(p).startswith("bad"): continue
    d = fitz.open(p)
    d.set_toc([])
    d.save(p[:-4] + ".noout.pdf", garbage=3, deflate=True)
PY

# broken inputs: truncated, not a PDF, encrypted, text-less (an image only)
want bad && head -c 3000 "$out/guide.latex.pdf" > "$out/bad-truncated.pdf"
want bad && printf 'this is not a pdf\n' > "$out/bad-notpdf.pdf"
want bad && "$py" - "$out" <<'PY'
import sys, os, fitz
out = sys.argv[1]
d = fitz.open(os.path.join(out, "guide.latex.pdf"))
d.save(os.path.join(out, "bad-encrypted.pdf"), encryption=fitz.PDF_ENCRYPT_AES_256,
       owner_pw="owner", user_pw="secret")
src = fitz.open(os.path.join(out, "guide.latex.pdf"))
pix = src[0].get_pixmap(dpi=40)
s = fitz.open(); pg = s.new_page(width=612, height=792)
pg.insert_image(pg.rect, pixmap=pix)
s.save(os.path.join(out, "bad-scanned.pdf"), deflate=True)
PY

# groff sources (tests/pdf/src/*.ms, *.mom) rendered once each, with gropdf:
#   footnote-long.ms.pdf   a footnote of more than 256 bytes over several rows
#                          (the footnote hang of issue 9)
#   heads.ms.pdf           a book's running heads and footers: chapter names with
#                          page numbers, odd/even sides, roman front matter, "N / M",
#                          a title that also runs as a head (src/heads.ms is
#                          written by tests/pdf/gen_heads.py)
#   layout.ms.pdf          numbered headings, code with style changes inside a
#                          word, a table of contents with leaders
if want ms; then
  python3 "$here/gen_heads.py"
  for src in "$here"/src/*.ms; do
    groff -ms -Tpdf "$src" > "$out/$(basename "$src" .ms).ms.pdf"
  done
  # groff mom: outline.mom.pdf, third-level headings in italics a hair larger
  # than the text (as groff's own mom-pdf.pdf), told from it by the outline
  for src in "$here"/src/*.mom; do
    groff -mom -Tpdf "$src" > "$out/$(basename "$src" .mom).mom.pdf"
  done
fi

# LaTeX sources (tests/pdf/src/NAME.PRODUCER.tex -> NAME.PRODUCER.pdf), pdflatex
# twice (frame totals, outline):
#   slides.beamer.pdf      a Beamer deck: glyph bullets (triangles, bullets,
#                          circles) nested three deep, "N / M" frame numbers in
#                          the title bar, overlays, a section navigation bar
#   paper.latex.pdf        a two-column article: five authors side by side
#                          under the title (centred stacks of name, institution,
#                          city, e-mail), words hyphenated where the style
#                          changes (plain to italic) or stays (italic, bold);
#                          on page 2 a ruled table across both columns (table*,
#                          a column where the gutter runs below) and a ruled
#                          table in a column with a footnote under it
if want tex; then
  for src in "$here"/src/*.tex; do
    name="$(basename "$src" .tex)"
    cp "$src" "$tmp/$name.tex"
    (cd "$tmp" && pdflatex -interaction=batchmode "$name.tex" >/dev/null && pdflatex -interaction=batchmode "$name.tex" >/dev/null)
    cp "$tmp/$name.pdf" "$out/$name.pdf"
  done
fi

# text without a Unicode mapping: no tools needed beyond python3
want unmapped && python3 - "$out" <<'PY'
import sys, os
# bad-unmapped.pdf: a one-page PDF whose text is drawn with a Type3 font that has no ToUnicode map
# and glyph names that mean nothing, as some producers write subset fonts.
def pdf(objs):
    out = bytearray(b"%PDF-1.4\n")
    offs = []
    for i, o in enumerate(objs, 1):
        offs.append(len(out))
        out += b"%d 0 obj\n" % i + o + b"\nendobj\n"
    x = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for o in offs: out += b"%010d 00000 n \n" % o
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, x)
    return bytes(out)
glyph = b"0 0 0 0 600 600 d1 0 0 600 600 re f"
names = b" ".join(b"/g%d" % i for i in range(1, 27))
procs = b" ".join(b"/g%d 6 0 R" % i for i in range(1, 27))
lines = []
for k in range(12):
    s = bytes(((k * 7 + j) % 26) + 1 for j in range(40))
    esc = s.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
    lines.append(b"BT /F1 10 Tf 72 %d Td (%s) Tj ET" % (700 - 14 * k, esc))
content = b"\n".join(lines)
objs = [
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
    b"<< /Type /Font /Subtype /Type3 /FontBBox [0 0 600 600] /FontMatrix [0.001 0 0 0.001 0 0] "
    b"/Encoding << /Type /Encoding /Differences [1 " + names + b"] >> /FirstChar 1 /LastChar 26 "
    b"/Widths [" + b" ".join([b"600"] * 26) + b"] /CharProcs 7 0 R >>",
    b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    b"<< /Length %d >>\nstream\n" % len(glyph) + glyph + b"\nendstream",
    b"<< " + procs + b" >>",
]
open(os.path.join(sys.argv[1], "bad-unmapped.pdf"), "wb").write(pdf(objs))
PY

ls -la "$out"; du -sh "$out"
