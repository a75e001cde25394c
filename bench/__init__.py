"""The benchmark: taskctl's worker setup against stock RQ and Celery, on one Redis, in one run."""

import socket


def free_port() -> int:
    """A port nothing listens on now, for a server of the bench's own (its Redis, its PostgreSQL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
