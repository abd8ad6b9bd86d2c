"""Logging of the msgfm commands: our stages' INFO on stderr, library chatter from WARNING, secrets redacted."""

from __future__ import annotations

import logging
import sys

from msgfm.ingest.redact import redact


class _CurrentStderrHandler(logging.StreamHandler):
    """Logs to whatever sys.stderr is at the time of the record (test runners swap it and close the old one)."""

    @property
    def stream(self):  # noqa: ANN201 - the base class's attribute, read on every record
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001 - set once by the base class; ignored
        pass


class _Redacting(logging.Filter):
    """Pass every log record (ours and the libraries') through `redact`: no signed-URL secrets in logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def setup_logging() -> None:
    """INFO logs of our stages on stderr once per process; library chatter only from WARNING."""
    root = logging.getLogger()
    if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.addFilter(_Redacting())
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
