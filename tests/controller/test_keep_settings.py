"""--keep-failed-seconds / --keep-succeeded-pods-seconds: flag, else env, else default; malformed stops
startup naming the flag or variable (commands/operator.py)."""

from __future__ import annotations

import argparse

import pytest

from stagefleet.commands import operator as operator_cmd
from stagefleet.commands.operator import seconds_setting

VAR = "STAGEFLEET_KEEP_FAILED_SECONDS"


def test_flag_beats_env_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    assert seconds_setting("--keep-failed-seconds", None, VAR, 3600) == 3600
    monkeypatch.setenv(VAR, "120")
    assert seconds_setting("--keep-failed-seconds", None, VAR, 3600) == 120
    assert seconds_setting("--keep-failed-seconds", "0", VAR, 3600) == 0
    monkeypatch.setenv(VAR, " ")
    assert seconds_setting("--keep-failed-seconds", None, VAR, 3600) == 3600


@pytest.mark.parametrize("bad", ["-1", "soon", "nan", "inf"])
def test_malformed_names_the_flag_or_variable(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    with pytest.raises(ValueError, match=rf"^--keep-failed-seconds: '{bad}' is not a number of seconds"):
        seconds_setting("--keep-failed-seconds", bad, VAR, 3600)
    monkeypatch.setenv(VAR, bad)
    with pytest.raises(ValueError, match=rf"^{VAR}: "):
        seconds_setting("--keep-failed-seconds", None, VAR, 3600)


def test_operator_exits_2_on_a_bad_value(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    operator_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["operator", "--metrics-port=0", "--keep-succeeded-pods-seconds=-5"])
    assert operator_cmd.run(args) == 2
    assert "--keep-succeeded-pods-seconds: '-5' is not a number of seconds >= 0" in capsys.readouterr().err
