#!/usr/bin/env bash
# tests/pdf/make_fixtures.sh — renders tests/pdf/src/*.md into PDFs through
# several Debian producers and writes them to tests/fixtures/pdf/:
#   NAME.latex.pdf    pandoc + pdflatex, one column, running header (fancyhdr)
#   NAME.latex2.pdf   pandoc + pdflatex, two columns (longtable -> tabular)
#   NAME.ms.pdf       pandoc -t ms, groff (pdfroff), "- N -" page headers
#   NAME.odt.pdf      pandoc -> docx -> soffice --headless --convert-to pdf
#   NAME.wk.pdf       pandoc -> html -> wkhtmltopdf, header and page footer
# and for each one NAME.PRODUCER.noout.pdf, the same file with the outline
# removed (PyMuPDF from /opt/refenv). Also a few broken files for error tests.
# Needs: pandoc texlive-latex-base texlive-latex-recommended
# texlive-fonts-recommended groff wkhtmltopdf libreoffice-writer(-nogui)
# poppler-utils; python3 with PyMuPDF (pip install pymupdf). CI does not run
# this: the PDFs are committed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../fixtures/pdf"
py="${PYTHON:-/opt/refenv/bin/python}"
mkdir -p "$out"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
export SOURCE_DATE_EPOCH=1700000000 QT_QPA_PLATFORM=offscreen
HEADER="Evaluation Corpus Draft"

for src in "$here"/src/*.md; do
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
"$py" - "$out" <<'PY'
import sys, glob, os, fitz
for p in sorted(glob.glob(os.path.join(sys.argv[1], "*.pdf"))):
    if ".noout." in p or os.path.basename(p).startswith("bad"): continue
    d = fitz.open(p)
    d.set_toc([])
    d.save(p[:-4] + ".noout.pdf", garbage=3, deflate=True)
PY

# broken inputs: truncated, not a PDF, encrypted, text-less (an image only)
head -c 3000 "$out/guide.latex.pdf" > "$out/bad-truncated.pdf"
printf 'this is not a pdf\n' > "$out/bad-notpdf.pdf"
"$py" - "$out" <<'PY'
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
ls -la "$out"; du -sh "$out"
