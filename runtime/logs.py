"""Library code reports through ``logging``; the command-line tools show each record as one
line on stderr ("simpsons-infer: warning: ..."), looked up at each record so that tests which
swap ``sys.stderr`` see the lines too."""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):
    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


class _Lines(logging.Formatter):
    def __init__(self, program: str):
        super().__init__()
        self.program = program

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return f"{self.program}: {record.levelname.lower()}: {record.getMessage()}"
        return record.getMessage()


def to_stderr(program: str, level: int = logging.INFO) -> None:
    """Route the project's loggers (``simpsons.*``) to stderr, one line per record."""
    logger = logging.getLogger("simpsons")
    handler = _StderrHandler()
    handler.setFormatter(_Lines(program))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
