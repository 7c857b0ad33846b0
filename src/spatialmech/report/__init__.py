"""Reports for people: figures (PNG + SVG) and the self-contained HTML report."""
