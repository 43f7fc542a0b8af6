"""Reliability scenarios: load, overload, faults and slow clients against the production config.

Each scenario starts its own server on 127.0.0.1 (image/gunicorn.conf.py, 2 workers), drives it with
bounded loops (wrk runs of fixed length, client loops with deadlines) and returns a Result with the
figures and a pass/fail verdict. The scenarios live by theme in this package's modules; __main__ holds
their one registry, full and quick lengths side by side. `scripts/reliability` runs them all and writes
docs/reliability.md; tests/reliability runs the quick lengths and asserts the same verdicts.
"""
