"""Benchmark harness of runregistry against its peers; run it with ``make bench``.

It is not part of the library and never runs in ``make test``, except for a
smoke test that runs it at N = 10 to keep it working.
"""
