"""The top floor: command-line programs that put several packages together.

`ime-segments` (segments.py) reads with segment/, exports with export/ and draws with report/; nothing below
imports this package. The other programs live with the one package they drive (record/cli.py, replay/cli.py,
sim/cli.py).
"""
