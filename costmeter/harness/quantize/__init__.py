"""Precision as a benchmark setting: precisions per runtime, calibration and held-out input sets,
and the fidelity of reduced-precision runs against fp32 (quantizers run in the converter's
child processes, :mod:`costmeter.harness.convert.quantize`)."""
