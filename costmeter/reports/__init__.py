"""Reports over stored results: pure functions over DataFrames first, rendering last.

``metrics`` (named metrics, row selection), ``selectors`` (run/tag/sha/date), ``accuracy``,
``pareto``, ``tables``, ``regression`` (+ ``regression_stats``, ``regression_verdicts``,
``simulated_history``) + ``history`` + ``regression_render``, ``predictor``,
``roofline`` + ``calibrate``; ``commands`` has one function per ``bench report`` subcommand.
Nothing here imports matplotlib, scipy or ruptures at import time.
"""
from __future__ import annotations
