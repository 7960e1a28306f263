"""Calibrations that hold: the measured default's choice is revisited when it was measured under load or when the
observed rates disagree, first-use notes stay off a captured stderr, and `specvlm --calibrate` measures on purpose.
Loads and rates are injected: no verdict here depends on how busy the machine is."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import tiny_llama

from drafters import measured_default as md
from specvlm import cli
from specvlm.machine_load import BUSY_SHARE, LoadMeter, LoadSample
from specvlm.notices import FirstOnly, first_use

RATES = {"ngram/ar": 10.0, "ngram/dynamic": 24.0, "trained+ngram/dynamic": 5.5}  # measured while a test run ran
IDLE = LoadSample(0.0, 0.3)
BUSY = LoadSample(0.5, 0.3)


def test_a_choice_measured_under_load_is_measured_again_once_idle() -> None:
    under_load = md.Choice("ngram", "dynamic", RATES, others_cpu=BUSY_SHARE + 0.2)
    assert under_load.under_load
    assert not md.due_again(under_load, lambda: BUSY)  # still busy: keep it for now, look again next time
    assert md.due_again(under_load, lambda: IDLE)
    assert not md.due_again(md.Choice("ngram", "dynamic", RATES), lambda: IDLE)  # measured idle: it stands
    spent = md.Choice("ngram", "dynamic", RATES, others_cpu=0.6, measurements=md.MEASUREMENTS)
    assert not md.due_again(spent, lambda: IDLE)  # at most MEASUREMENTS times


@pytest.mark.parametrize(
    ("observed", "stale"),
    [
        ((24.0, 25.0, 23.0), False),  # as measured
        ((40.0, 41.0, 39.0), True),  # far faster than measured: the measurement ran slow
        ((10.0, 9.0, 11.0), False),  # slower, but no alternative recorded faster by the factor
        ((24.0, 90.0), False),  # too few generations to compare
    ],
)
def test_observed_rates_mark_a_choice_stale(observed: tuple[float, ...], stale: bool) -> None:
    choice = md.Choice("ngram", "dynamic", RATES)
    for rate in observed:
        choice = choice.with_observed(rate)
    assert choice.observed == observed and choice.stale is stale
    assert md.due_again(choice, lambda: IDLE) is stale


def test_an_alternative_recorded_faster_than_what_is_observed_marks_stale() -> None:
    choice = md.Choice("ngram", "ar", {"ngram/ar": 10.0, "ngram/dynamic": 30.0, "trained+ngram/dynamic": 9.0})
    for rate in (10.0, 11.0, 9.5):
        choice = choice.with_observed(rate)
    assert choice.stale


def test_choice_file_round_trip_and_older_files(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    choice = md.Choice("trained+ngram", "dynamic", RATES, others_cpu=0.4, measurements=2, observed=(3.0,))
    md.write_choice(path, choice)
    assert md.read_choice(path) == choice
    path.write_text(json.dumps({"draft": "ngram", "tree": "ar", "rates": RATES}))  # written before the load check
    assert md.read_choice(path) == md.Choice("ngram", "ar", RATES)
    path.write_text("{")
    assert md.read_choice(path) is None


def test_load_meter_counts_other_work_only() -> None:
    sample = LoadMeter().sample()
    assert 0.0 <= sample.others <= 1.0
    assert LoadSample(BUSY_SHARE + 0.01, 1.0).busy and not LoadSample(BUSY_SHARE, 1.0).busy


def test_first_use_notes_show_once_on_a_terminal_and_never_on_a_captured_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    handler.addFilter(FirstOnly())
    log = logging.getLogger("specvlm.firstuse")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        first_use("converting", Path("/x"))
        first_use("timing")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert records == ["specvlm: one-time set-up on this machine (later runs skip it): converting (cached in /x)"]
    first_use("timing")  # no handler: the library stays quiet (INFO is below the last-resort level)
    assert capsys.readouterr().err == ""


def test_calibrate_flag_measures_and_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny_llama(seed=0)
    model.save_pretrained(tmp_path / "tiny")
    assert cli.main(["--calibrate", "--target", str(tmp_path / "tiny"), "--draft", "ngram"]) == 0
    out = capsys.readouterr().out
    assert "forward cost by tokens scored" in out and "1-token cross-check" in out
    rows = [line.split() for line in out.splitlines() if line.strip().endswith(" ms") and line.startswith("  ")]
    sizes = [int(r[0]) for r in rows]
    assert sizes[0] == 1 and sizes == sorted(sizes) and len(sizes) >= 8
    assert [float(r[1]) for r in rows] == sorted(float(r[1]) for r in rows)  # a plausible (rising) curve
