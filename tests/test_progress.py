"""Progress as paced log lines off a terminal, a bar on one, nothing when off; driven by a fake clock."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from dapl.progress import Progress, console_logging, format_duration, resolve_mode, track


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def lines(caplog) -> list[str]:
    """Messages of the ``dapl.progress`` logger, as they are emitted."""
    caplog.set_level(logging.INFO, logger="dapl.progress")
    return _Lines(caplog)


class _Lines(list):
    def __init__(self, caplog) -> None:
        super().__init__()
        self.caplog = caplog

    def now(self) -> list[str]:
        return [r.getMessage() for r in self.caplog.records if r.name == "dapl.progress"]


def _run(total: int, per_step: int, seconds: float, steps: int, **kw) -> tuple[Clock, Progress]:
    clock = Clock()
    p = Progress(total, "job", "img", mode="log", clock=clock, **kw)
    for _ in range(steps):
        clock.t += seconds
        p.update(per_step)
    return clock, p


def test_log_lines_every_30_s_when_that_is_rarer_than_10_percent(lines):
    # 10 img/s: 10 % (100 img) passes every 10 s, so the 30 s rule sets the pace
    _, p = _run(1000, 10, 1.0, 95)
    assert lines.now() == ["job: 300/1,000 img (30 %), 10.0 img/s, ETA 1 min 10 s",
                           "job: 600/1,000 img (60 %), 10.0 img/s, ETA 40 s",
                           "job: 900/1,000 img (90 %), 10.0 img/s, ETA 10 s"]
    p.close()
    assert lines.now()[-1] == "job: done 950/1,000 img (95 %) in 1 min 35 s (10.0 img/s)"


def test_log_lines_every_10_percent_when_that_is_rarer_than_30_s(lines):
    # 1 img/s: 30 s pass every 30 img, 10 % takes 100 s
    _, p = _run(1000, 1, 1.0, 1000)
    got = lines.now()
    assert len(got) == 9 and got[0] == "job: 100/1,000 img (10 %), 1.0 img/s, ETA 15 min 00 s"
    assert got[-1] == "job: 900/1,000 img (90 %), 1.0 img/s, ETA 1 min 40 s"  # then the final line, not 100 %
    p.close()
    assert lines.now()[-1] == "job: done 1,000/1,000 img (100 %) in 16 min 40 s (1.0 img/s)"


def test_without_a_total_only_the_30_s_rule_applies(lines):
    _, p = _run(None, 1, 10.0, 7)
    p.close()
    assert lines.now() == ["job: 3 img, 0.1 img/s", "job: 6 img, 0.1 img/s", "job: done 7 img in 1 min 10 s "
                           "(0.1 img/s)"]


def test_a_resumed_run_counts_its_rate_from_its_own_work_and_says_when_it_stopped(lines):
    clock = Clock()
    with pytest.raises(KeyboardInterrupt), Progress(100, "train", "it", initial=60, mode="log", clock=clock) as p:
        clock.t += 10
        p.update(20)
        p.set_postfix(loss="0.512")
        raise KeyboardInterrupt
    assert lines.now() == ["train: stopped at 80/100 it (80 %) in 10 s (2.0 it/s), loss=0.512"]


def test_nothing_done_says_nothing_and_off_is_silent(lines, capsys):
    Progress(10, "idle", mode="log", clock=Clock()).close()
    clock = Clock()
    off = Progress(100, "quiet", mode="off", clock=clock, ahead="100 images")
    for _ in range(10):
        clock.t += 60
        off.update(10)
    off.close()
    assert lines.now() == [] and off.n == 100 and capsys.readouterr().err == ""


def test_bar_mode_draws_on_stderr_and_logs_nothing(lines, capsys):
    clock = Clock()
    with Progress(100, "bar job", "img", mode="bar", clock=clock, ahead="100 images") as p:
        for _ in range(10):
            clock.t += 60
            p.update(10)
    err = capsys.readouterr().err
    assert lines.now() == [] and "bar job" in err and "100/100" in err
    # the estimate is printed above the bar instead of logged, once
    assert "bar job: 100 images ahead, ~10 min 00 s at 0.17 img/s\n" in err and err.count("ahead") == 1


def test_the_estimate_line_comes_once_after_the_warm_up(lines):
    clock = Clock()
    p = Progress(1000, "extract source views", "img", mode="log", clock=clock, ahead="500 images × 2 views")
    clock.t += 20  # loader start-up and the first batch: not part of the measured rate
    p.update(10)
    for _ in range(4):
        clock.t += 1
        p.update(10)
    assert lines.now() == []  # 4 s and 4 % after the first batch: too early to tell
    clock.t += 1
    p.update(10)
    for _ in range(4):
        clock.t += 1
        p.update(10)
    assert lines.now() == ["extract source views: 500 images × 2 views ahead, ~1 min 40 s at 10.0 img/s"]
    p.close()
    assert len(lines.now()) == 2


def test_the_estimate_can_come_from_the_share_before_5_s(lines):
    clock = Clock()
    p = Progress(100, "train", "it", mode="log", clock=clock, ahead="100 steps (2 epochs × 50)")
    p.update(1)
    clock.t += 2
    p.update(5)
    assert lines.now() == ["train: 100 steps (2 epochs × 50) ahead, ~40 s at 2.5 it/s"]


def test_track_counts_items_and_closes(lines):
    clock = Clock()

    def slow():
        for i in range(4):
            clock.t += 45
            yield i

    assert list(track(slow(), "verify", "img", total=4, mode="log", clock=clock)) == [0, 1, 2, 3]
    assert lines.now() == ["verify: 1/4 img (25 %), 0.022 img/s, ETA 2 min 15 s",
                           "verify: 2/4 img (50 %), 0.022 img/s, ETA 1 min 30 s",
                           "verify: 3/4 img (75 %), 0.022 img/s, ETA 45 s",
                           "verify: done 4/4 img (100 %) in 3 min 00 s (0.022 img/s)"]


def test_modes_resolve_from_the_stream():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_mode("auto", Tty()) == "bar" and resolve_mode("auto", io.StringIO()) == "log"
    assert resolve_mode(True, io.StringIO()) == "log" and resolve_mode(False) == "off"
    assert resolve_mode("log", Tty()) == "log"
    with pytest.raises(ValueError, match="progress mode 'loud': expected one of auto, bar, log, off"):
        resolve_mode("loud")
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 7500)] == ["0 s", "59 s", "1 min 01 s", "59 min 59 s",
                                                                       "2 h 05 min"]


def test_console_logging_prints_plain_lines_without_tracebacks(monkeypatch, capsys):
    root, dapl = logging.getLogger(), logging.getLogger("dapl")
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(dapl, "handlers", [])
    monkeypatch.setattr(dapl, "propagate", True)
    level = dapl.level
    dapl.setLevel(logging.NOTSET)
    try:
        console_logging()
        console_logging()  # once only
        assert len(dapl.handlers) == 1 and dapl.level == logging.INFO
        logging.basicConfig(stream=sys.stderr)  # a library configuring the root later: no second copy
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("dapl.progress").exception("extract: done")
        logging.getLogger("dapl.progress").debug("hidden")
    finally:
        dapl.setLevel(level)
    assert capsys.readouterr().err == "extract: done\n"


def test_index_and_extraction_log_progress_off_a_terminal(caplog, blob_world, tiny_config_dir, tmp_path):
    from dapl.clip import load_clip
    from dapl.config import ModelConfig
    from dapl.datasets.index import index_dataset
    from dapl.features import FeatureCache

    caplog.set_level(logging.INFO, logger="dapl.progress")
    m = index_dataset("folder", blob_world, progress="log", check_counts=False)
    bundle = load_clip(ModelConfig(name=str(tiny_config_dir / "tiny-rn.json"), pretrained=None, device="cpu"))
    images = m.image_set(["light"])
    cache = FeatureCache(tmp_path, bundle, batch_size=8, num_workers=0, precision="fp32", progress="log")
    cache.test_features(images, "light test")
    got = [r.getMessage() for r in caplog.records if r.name == "dapl.progress"]
    assert len(got) == 2
    assert got[0].startswith(f"verify folder: done {m.n_ok}/{m.n_ok} img (100 %) in ")
    assert got[1].startswith(f"extract light test: done {len(images)}/{len(images)} img (100 %) in ")
