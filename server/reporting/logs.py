"""The gateway's log lines, one record a line: text for a person at a terminal, JSON for a collector.

``GATEWAY_LOG_FORMAT=json`` makes every line the gateway writes one JSON object: ``time`` (UTC,
ISO 8601), ``level``, ``logger``, ``pid`` and ``message`` for an ordinary line (``exception`` with
its traceback); a structured line (``Fields``, the call line) has its fields at the top level in
place of ``message``. The ready line on stdout and the start-up errors follow the same format
(``line``). In text the call line is its JSON after the usual ``<time> <pid> <level> <logger>:``.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
_JSON = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps with options makes one per call


class Fields:
    """A structured log line: logged as ``log.info("%s", Fields(...))``, it reads as its JSON in text and
    spreads its fields at the top level in JSON. Encoded once, however many handlers and filters read it."""

    __slots__ = ("_text", "fields")

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = _JSON.encode(self.fields)
        return self._text


def _time(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object on one line (a traceback is a string field, never extra lines)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process if record.process is not None else os.getpid(),
        }
        args = record.args
        if record.msg == "%s" and isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], Fields):
            line.update(args[0].fields)
        else:  # a line redacted by LogRedaction lands here too: its text, secrets cut out, as the message
            line["message"] = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _JSON.encode(line)


# The logging module's per-record switches (its documented "Optimization"), set to skip what it gathers for
# each record and the gateway's formats leave unused: the caller's file and line (a stack walk), thread and
# multiprocessing names, and the process id (the text format has it formatted in once).
LEAN: dict[str, Any] = {"_srcfile": None, "logThreads": False, "logMultiprocessing": False, "logProcesses": False}


def lean_records() -> None:
    """Set the logging module's switches as ``LEAN`` says, for the whole process (``python -m server``)."""
    for name, value in LEAN.items():
        setattr(logging, name, value)


def text_formatter() -> logging.Formatter:
    """The text format: time, process id, level and logger before the message."""
    return logging.Formatter(f"%(asctime)s {os.getpid()} %(levelname)s %(name)s: %(message)s")


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``GATEWAY_LOG_FORMAT``."""
    return JsonFormatter() if log_format == "json" else text_formatter()


def line(log_format: str, message: str, level: str = "INFO", **fields: Any) -> str:
    """A line the gateway prints itself (not through logging: the ready line, a start-up error), in the
    format asked for; ``fields`` only in JSON."""
    if log_format != "json":
        return message
    return _JSON.encode(
        {"time": _time(datetime.now(UTC).timestamp()), "level": level, "logger": "server", "pid": os.getpid()}
        | {"message": message}
        | fields
    )
