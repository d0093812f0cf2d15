"""The comparison suite: every method on one model, one calibration pass, one evaluation protocol.

``suite.py`` reads and checks a suite config (``compare_cfgs/``), ``runner.py`` runs it on one loaded
model through ``harness.runner.PlanRunner`` (resumable cell by cell), ``table.py`` turns the saved
results into the markdown table and ``plots.py`` draws accuracy against memory and speed-up.
``tools/compare.py`` is the entry point.
"""
