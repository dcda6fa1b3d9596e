"""Flowcraft benchmarks: workloads, a harness that runs them on any backend, and a Celery peer.

Run ``python -m benchmarks --help`` from the repository root; see benchmarks/README.md.
"""
