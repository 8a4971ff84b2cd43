"""Reports over stored results: pure functions over DataFrames first, rendering last.

``metrics`` (named metrics, row selection), ``selectors`` (run/tag/sha/date), ``accuracy``,
``pareto``, ``tables``, ``regression`` (+ ``regression_stats``, ``regression_verdicts``,
``simulated_history``) + ``history`` + ``regression_render``, ``site`` + ``site_plots`` +
``site_render`` (the history site), ``subset`` + ``simulated_suite`` (the nightly subset),
``predictor``, ``roofline`` + ``calibrate``; ``commands`` and ``nightly_commands`` have one
function per ``bench report`` subcommand.
Nothing here imports matplotlib, scipy or ruptures at import time.
"""
from __future__ import annotations
