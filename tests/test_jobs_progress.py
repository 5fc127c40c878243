"""Progress reporting (jobs/progress.py): a bar on a terminal, periodic plain lines elsewhere."""

from __future__ import annotations

import io
import logging

from zsteer.jobs import progress
from zsteer.jobs.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_rows_rate_and_eta():
    stream = Terminal()
    bar = Progress(total=1000, done=200, every_seconds=0.0, stream=stream)
    bar.update(300)
    bar.close()
    text = stream.getvalue()
    assert "500/1000" in text and "rows" in text and "<" in text  # tqdm's "elapsed<remaining"


def test_elsewhere_a_line_every_few_seconds(monkeypatch, caplog):
    clock = iter([0.0, 1.0, 20.0, 21.0])  # start, then one monotonic reading per update
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()  # not a terminal: no bar, nothing written to the stream itself
    report = Progress(total=100, done=10, every_seconds=15.0, stream=stream)
    with caplog.at_level(logging.INFO, logger="zsteer.jobs"):
        report.update(10)  # t = 1: too soon
        report.update(30)  # t = 20: a line
        report.update(10)  # t = 21: too soon again
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["50/100 rows (50.0%), 2.0 rows/s, ETA 0:00:25"]
    assert stream.getvalue() == "" and report.done == 60
