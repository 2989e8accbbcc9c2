"""The statistics that decide H1-H3: nulls, tests, and the written verdict rules.

``stats`` holds the plain tests (ANOVA/Kruskal across clusters, permutation differences, regressions, multiple-test
correction); ``h1`` the permutation null, bootstrap stability and cluster tests of one network, with ``nulls`` the
graph-aware null draws; ``verdicts`` the one written rule per hypothesis that every report renders.

May import: ``engines`` and the top-level vocabulary. Never ``stages``, ``tracking`` or ``reports``.
"""
