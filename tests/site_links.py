"""Walking a static site's files: every local link and image it names, and the ids it defines
(shared by the site tests and the browser test)."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

LINK_ATTRIBUTES = ("href", "src", "xlink:href")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in LINK_ATTRIBUTES and value is not None:
                self.links.append(value)
            if name == "id" and value:
                self.ids.add(value)

    handle_startendtag = handle_starttag


def collect(page: Path) -> _Collector:
    collector = _Collector()
    collector.feed(page.read_text(encoding="utf-8"))
    return collector


def broken_links(site: Path) -> tuple[list[str], list[str], int]:
    """(broken local links as 'page -> link', external links, number of links checked) over
    every HTML page under ``site``; a fragment must name an id on its target page."""
    broken, external, checked = [], [], 0
    pages = {p.resolve(): collect(p) for p in site.rglob("*.html")}
    for page, found in pages.items():
        for link in found.links:
            parts = urlsplit(link)
            if parts.scheme in ("http", "https") or link.startswith("//"):
                external.append(f"{page.name} -> {link}")
                continue
            if parts.scheme:  # data: URIs and the like are inline content
                continue
            checked += 1
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.is_file():
                broken.append(f"{page.relative_to(site.resolve())} -> {link}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else collect(target).ids
                if parts.fragment not in ids:
                    broken.append(f"{page.relative_to(site.resolve())} -> {link} (no such id)")
    return broken, external, checked
