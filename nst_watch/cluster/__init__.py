"""The Ray backend: engines as Ray actors, one per GPU of a cluster (README "Several machines").

Imported only with `--ray` or `cluster.backend: ray`, and then only in the
dispatcher process (`nst-watch work --ray`) and on the cluster's machines:
single-machine mode and the watcher never import Ray.
"""
