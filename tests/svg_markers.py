"""Counting the markers matplotlib draws in an SVG (shared by the report tests)."""
from __future__ import annotations


def svg_marker_counts(svg: str, prefix: str) -> dict[str, int]:
    """Markers drawn in each SVG group whose id starts with ``prefix``: <path> and <use>
    elements, not counting marker definitions under <defs>."""
    import xml.etree.ElementTree as ET

    ns = "{http://www.w3.org/2000/svg}"
    counts = {}
    for group in ET.fromstring(svg.encode()).iter(f"{ns}g"):
        gid = group.get("id", "")
        if gid.startswith(prefix):
            defs = {id(e) for d in group.iter(f"{ns}defs") for e in d.iter()}
            counts[gid] = sum(
                1 for e in group.iter() if e.tag in (f"{ns}path", f"{ns}use") and id(e) not in defs
            )
    return counts
