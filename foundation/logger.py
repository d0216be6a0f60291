"""Logging to the console and to a log file under the output folder."""
import logging
import os
import sys

LOGGER_NAME = "facefeat"
WARNINGS_LOGGER = "py.warnings"  # where logging.captureWarnings sends Python warnings


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is now (test runners and redirections swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def get_logger():
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:
        handler = _CurrentStdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def quiet_library_warnings():
    """Send Python warnings that libraries raise (Paddle's ccache, PIR and BatchNorm notes) to the
    run's log file (see log_to_file) instead of the console, which keeps our progress and results."""
    logging.captureWarnings(True)
    warn_log = logging.getLogger(WARNINGS_LOGGER)
    warn_log.propagate = False
    if not warn_log.handlers:
        warn_log.addHandler(logging.NullHandler())  # until a log file exists: dropped, not printed


def log_to_file(path):
    """Also write every log line (and captured library warnings) to `path`, appending: a resumed
    run keeps its history."""
    logger = get_logger()
    warn_log = logging.getLogger(WARNINGS_LOGGER)
    path = os.path.abspath(path)
    for h in logger.handlers:
        if isinstance(h, logging.FileHandler) and h.baseFilename == path:
            return logger
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        if h in warn_log.handlers:
            warn_log.removeHandler(h)
        h.close()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    warn_log.addHandler(handler)
    return logger
