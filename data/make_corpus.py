#!/usr/bin/env python3
"""Rebuild data/python-docs-prose.txt from Debian's python3.11-doc package.

Usage (Debian 12, no network access other than Debian's archive):

    apt-get download python3.11-doc        # python3.11-doc_3.11.2-6+deb12u9_all.deb
    dpkg-deb -x python3.11-doc_*.deb x
    python3 data/make_corpus.py x/usr/share/doc/python3.11/html > data/python-docs-prose.txt

Only the Python standard library is used. From each page listed in PAGES the
converter keeps the main body (`<div class="body" role="main">`) and turns it
into plain text: headings, paragraphs, list items, definition lists and
admonitions become paragraphs (re-wrapped at 79 columns, separated by blank
lines); code blocks (`<pre>`), tables, images, footnote markers, the "¶"
header links and the `versionadded`/`versionchanged` notes are dropped. HTML
entities are decoded; the text stays UTF-8 (typographic quotes and dashes kept).
"""

import html
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

# Prose-heavy pages, in reading order: the tutorial, the FAQ and the HOWTOs
# (the reference-like HOWTOs clinic, instrumentation, cporting, isolating-extensions
# and logging-cookbook, which are mostly code, are left out).
TUTORIAL = [
    "appetite", "interpreter", "introduction", "controlflow", "datastructures",
    "modules", "inputoutput", "errors", "classes", "stdlib", "stdlib2", "venv",
    "whatnow", "interactive", "floatingpoint", "appendix",
]
FAQ = ["general", "programming", "design", "library", "extending", "windows", "gui", "installed"]
HOWTO = [
    "pyporting", "curses", "descriptor", "functional", "logging", "regex", "sockets",
    "sorting", "unicode", "urllib2", "argparse", "ipaddress", "annotations", "enum",
]
PAGES = (
    [f"tutorial/{p}.html" for p in TUTORIAL]
    + [f"faq/{p}.html" for p in FAQ]
    + [f"howto/{p}.html" for p in HOWTO]
)

BLOCK = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "div", "section",
         "blockquote", "ul", "ol", "dl", "figure", "caption"}
SKIP = {"pre", "table", "script", "style", "img", "svg", "figure"}
SKIP_CLASSES = {"headerlink", "highlight", "versionadded", "versionchanged", "deprecated",
                "footnote-reference", "toctree-wrapper", "footnote", "sidebar"}


class Body(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth = 0          # depth inside the main body div (0: outside)
        self.skip_stack = []    # depths at which a skipped element started
        self.paras = []
        self.cur = []

    def flush(self):
        text = " ".join("".join(self.cur).split())
        if text:
            self.paras.append(text)
        self.cur = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.depth == 0:
            if tag == "div" and a.get("role") == "main":
                self.depth = 1
            return
        if tag not in ("br", "hr", "img", "input", "meta", "link", "wbr"):
            self.depth += 1
        classes = set((a.get("class") or "").split())
        if not self.skip_stack and (tag in SKIP or classes & SKIP_CLASSES):
            if tag in ("img",):
                return
            self.skip_stack.append(self.depth)
            return
        if not self.skip_stack and tag in BLOCK:
            self.flush()

    def handle_endtag(self, tag):
        if self.depth == 0 or tag in ("br", "hr", "img", "input", "meta", "link", "wbr"):
            return
        if self.skip_stack and self.skip_stack[-1] == self.depth:
            self.skip_stack.pop()
        elif not self.skip_stack and tag in BLOCK:
            self.flush()
        self.depth -= 1
        if self.depth == 0:
            self.flush()

    def handle_data(self, data):
        if self.depth > 0 and not self.skip_stack:
            self.cur.append(data)


def convert(path):
    parser = Body()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    parser.flush()
    return [html.unescape(p) for p in parser.paras]


def main():
    root = Path(sys.argv[1])
    out = []
    for page in PAGES:
        for para in convert(root / page):
            out.append(textwrap.fill(para, width=79, break_long_words=False,
                                     break_on_hyphens=False))
    sys.stdout.write("\n\n".join(out) + "\n")


if __name__ == "__main__":
    main()
