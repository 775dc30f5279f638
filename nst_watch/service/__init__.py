"""The daemon: intake (watch -> settle -> route -> ledger), workers, originals, status.

Only `worker` imports torch (through nst_watch.darkroom); `nst-watch watch`
runs intake alone and never loads it.
"""
