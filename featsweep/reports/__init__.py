"""What a person reads: the run's ``report.html``, the sweep's ``compare/`` page and its summary.

``run_report`` renders one run; ``sweep_report`` the sweep's page and the end-of-run messages; ``compare``
collects a sweep's runs from MLflow (``python -m featsweep.reports.compare``). Reports read results and logged
runs; nothing reads reports.

May import: ``hypotheses.verdicts`` (the rules they print), ``tracking`` (to read runs), the top-level vocabulary.
"""
