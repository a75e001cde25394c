"""taskctl: background jobs for Python web applications, on RQ and Redis.

Application code uses ``taskctl.declare.job`` to declare a function in ``jobs/``
and ``taskctl.enqueue.enqueue`` to run one in the background. This package file
imports nothing, so that a job module importing ``taskctl.declare`` does not
pull in RQ and Redis.
"""
