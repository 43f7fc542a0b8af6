"""Load benchmark: this server against the naive Flask baseline, KServe and MLServer (scripts/bench)."""
