"""`ime-segments report`: a recording's health as one self-contained HTML page (needs matplotlib, `analysis` extra).

collect (the pass over the records: `stats`' own accumulators, observed over time) → figures (matplotlib, inline
SVG) → page (the HTML, its tables and a JSON block of the same figures) ← cli (options, files, exit codes).
"""
