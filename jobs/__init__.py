"""The jobs: plain functions, one module per domain, declared with ``@job``.

Nothing here imports RQ or Redis. Every function decorated with
``taskctl.declare.job`` in a module of this package is in the catalog under its
name; see README "Writing a job".
"""
