"""The course as a PDF: the course page's HTML, printable (answers shown, contents as a list),
laid out by WeasyPrint.

Why WeasyPrint rather than headless Chromium's print-to-PDF: it runs in the web or worker process
itself (a Python library over Debian's pango), so the server needs no browser binary and starts
no subprocess per download; it implements CSS paged media (page size, margins, page numbers
"n / total", breaks before modules) from the same print styles the page uses. Its fetcher is
replaced by one that refuses every URL: the document is self-contained, and model text can never
make the server fetch anything.
"""

from __future__ import annotations

import logging

import weasyprint  # imported by name on the first PDF export only (exports.FORMATS)
from weasyprint.urls import URLFetcher

from generation.exports.document import Course
from generation.exports.html import course_html

# WeasyPrint warns about every screen-only rule it skips (width media queries, clamp(),
# ::details-content): noise for a document whose print styles it does apply.
logging.getLogger("weasyprint").setLevel(logging.ERROR)


def render(course: Course) -> bytes:
    html = course_html(course, printable=True)
    no_fetching = URLFetcher(allowed_protocols=frozenset(), allow_redirects=False)
    document = weasyprint.HTML(string=html, url_fetcher=no_fetching)
    pdf: bytes = document.write_pdf()  # its title: the page's <title>
    return pdf
