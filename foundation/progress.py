"""A dependency-free progress bar: count, rate (items/s) and ETA.

On a terminal it redraws one line; elsewhere (CI logs, files) it prints a line every
`every_seconds` so logs stay readable.
"""
import sys
import time


def format_seconds(seconds):
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total, desc="", unit="img", stream=None, every_seconds=10.0, width=30, enabled=True):
        self.enabled = enabled  # False: count, print nothing (a service request is not a console job)
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream or sys.stderr
        self.every_seconds = every_seconds
        self.width = width
        self.count = 0
        self.start = time.perf_counter()
        self._last_print = 0.0
        self.is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.postfix = ""

    @property
    def rate(self):
        elapsed = time.perf_counter() - self.start
        return self.count / elapsed if elapsed > 0 else 0.0

    def eta(self):
        rate = self.rate
        if not self.total or rate <= 0:
            return None
        return (self.total - self.count) / rate

    def line(self):
        eta = self.eta()
        eta_text = format_seconds(eta) if eta is not None else "--:--"
        if self.total:
            frac = min(1.0, self.count / self.total)
            filled = int(self.width * frac)
            bar = "#" * filled + "." * (self.width - filled)
            head = f"{self.desc} [{bar}] {self.count}/{self.total}"
        else:
            head = f"{self.desc} {self.count}"
        tail = f" {self.postfix}" if self.postfix else ""
        return f"{head} {self.rate:.1f} {self.unit}/s ETA {eta_text}{tail}"

    def update(self, n=1, postfix=None):
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        done = self.total and self.count >= self.total
        if not self.enabled:
            return
        if self.is_tty:
            if now - self._last_print > 0.1 or done:
                self.stream.write("\r" + self.line())
                self.stream.flush()
                self._last_print = now
        elif now - self._last_print >= self.every_seconds or done:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            self._last_print = now

    def close(self):
        if self.enabled and self.is_tty:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
