"""rq-dashboard's own templates, rewritten so that every value their pages insert shows as text, once.

Its pages fetch JSON and build their rows in the browser with underscore.js
templates, where ``<%= x %>`` inserts ``x`` as markup and ``<%- x %>`` as text.
Most of its insertions are ``<%=``, so a job's description, arguments, result,
meta or traceback would be markup that the browser renders and runs; a few
already escape, with ``<%-`` or with jQuery (``$('<div/>').text(x).html()``).
None is meant to be markup: the others are counts, dates, names and URLs in
``href``, which an HTML parser reads back unchanged once escaped. So here every
insertion becomes ``<%- x %>``: one escape, whatever the template did before.

Why here and not in the JSON (taskctl used to HTML-escape the data endpoints):
JSON is data, and a script reading it must get a job's real description; and
the insertions that already escaped showed every value escaped twice.

Why rewrite rather than copy: the templates stay rq-dashboard's, so an upgrade
brings its changes; the tests check that no page is left with a raw insertion.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from jinja2 import BaseLoader, Environment, PackageLoader

REWRITES = [
    # Escaped once by jQuery already: becomes a plain escaped insertion.
    (re.compile(r"<%=\s*\$\('<div/>'\)\.text\((.+?)\)\.html\(\)\s*%>"), r"<%- \1 %>"),
    (re.compile(r"<%="), "<%-"),
    # jobs.js writes the queue name, which comes from the URL, into a JS string unescaped
    # (Jinja does not autoescape .js): a link could run script. Written as JSON, as the rest of it is.
    (re.compile(r"'\{\{ queue\.name \}\}'"), "{{ queue.name|tojson }}"),
]


class StockTemplates(BaseLoader):
    """rq-dashboard's templates with REWRITES applied."""

    def __init__(self) -> None:
        self.stock = PackageLoader("rq_dashboard", "templates")

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = self.stock.get_source(environment, template)
        for pattern, replacement in REWRITES:
            source = pattern.sub(replacement, source)
        return source, filename, uptodate

    def list_templates(self) -> list[str]:
        return self.stock.list_templates()
