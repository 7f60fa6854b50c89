"""Layer: orchestrator — supervisor, scheduler, replay log and the CLI.

The top layer: may import worker, inference and shm_protocol.
"""


def main(argv=None) -> int:
    from ._cli import main as _main

    return _main(argv)


__all__ = ["main"]
