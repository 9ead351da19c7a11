"""Presenting a run: the terminal transcript and the HTML space-time report.

The rule: a report is derived from a run's recorded events and nothing else; `spacetime` builds
the self-contained page from `model` (what is shown), `layout` (where), `svg` and `page`
(drawing) and `assets` (inlined style and script).
"""
