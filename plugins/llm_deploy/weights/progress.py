"""snapshot_download's progress bars as log lines.

Airflow task logs are line-based: a terminal bar redrawn with carriage returns would arrive as
one unreadable line per refresh. ``log_bar_class`` gives snapshot_download (its ``tqdm_class``)
a tqdm whose every redraw is one log record instead, at most every LOG_EVERY_S seconds per bar.
tqdm keeps the counts, the rates and the formatting; only where a redraw goes changes.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


class LogBar(tqdm):
    """A tqdm that logs its redraws; byte bars also wait for ``every_bytes`` more bytes."""

    every_bytes = 1
    # tqdm's monitor thread lowers miniters when a bar has been quiet for maxinterval, which would
    # undo every_bytes; a log line may well wait longer than a terminal redraw.
    monitor_interval = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", LOG_EVERY_S)
        if kwargs.get("unit") == "B":
            kwargs.setdefault("miniters", self.every_bytes)
        # The log is the output; tqdm still writes a closing newline into its file, here unseen.
        kwargs["file"] = io.StringIO()
        kwargs["ascii"] = True
        self._last_line: str | None = None
        self._logged_at = float("-inf")
        self._logged_desc: str | None = None
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        # tqdm's documented hook for another frontend; pos (a terminal row) means nothing in a log.
        line = (str(self) if msg is None else msg).strip()
        if not line or line == self._last_line:
            # snapshot_download never closes its byte bars, so tqdm redraws them once more when
            # they are collected; a redraw that shows nothing new is no new log line.
            return
        now = self._time()
        # snapshot_download also redraws its byte bars unthrottled, once per file it starts; so
        # wait here too, except for a new phase ("Reconstruction complete") or the closing line.
        due = now - self._logged_at >= LOG_EVERY_S or self.desc != self._logged_desc or self.disable
        if due:
            self._last_line, self._logged_at, self._logged_desc = line, now, self.desc
            log.info("%s", line)


def log_bar_class(every_bytes: int) -> type[LogBar]:
    """A LogBar class (snapshot_download wants a class) whose byte bars log per every_bytes at most."""
    return type("LogBar", (LogBar,), {"every_bytes": max(every_bytes, 1)})
