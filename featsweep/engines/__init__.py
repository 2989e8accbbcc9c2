"""The computational engines the stages drive, each with the reference it is tested against.

``graph`` is the compiled (igraph + scipy) engine: threshold, communities, modularity, rewiring;
``centrality`` its centralities (exact and sampled); ``graph_reference`` the plain networkx reference that defines
every number. ``intervention`` steers or ablates SAE features at the hook and measures the task; ``fused_tail``
runs the layers after the hook as large fused operations (checked against TransformerLens's blocks).

May import: ``featsweep.config``, ``errors``, ``results``. Nothing above (no stages, hypotheses, tracking, reports).
"""
