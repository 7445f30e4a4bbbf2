"""proxy.server: how long the supervisor waits before it starts a dead worker again,
and how a death is named (the worker death metric's label)."""

from __future__ import annotations

import resource
import signal
from types import SimpleNamespace
from typing import cast

import pytest

from proxy.config import ConnectionSettings, Settings
from proxy.server import RestartBackoff, _cause, _raise_open_files_limit


def test_a_worker_that_keeps_dying_is_restarted_ever_more_slowly_up_to_the_cap() -> None:
    backoff = RestartBackoff(base_s=0.5, max_s=30.0, stable_s=60.0)
    delays = [backoff.delay(0, ran_s=1.0) for _ in range(9)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_a_worker_that_had_run_a_while_is_restarted_soon_and_each_index_on_its_own() -> None:
    backoff = RestartBackoff(base_s=0.5, max_s=30.0, stable_s=60.0)
    assert backoff.delay(0, ran_s=3600.0) == 0.5
    assert [backoff.delay(0, ran_s=2.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.delay(1, ran_s=2.0) == 1.0, "another worker's crashes are its own"
    assert backoff.delay(0, ran_s=61.0) == 0.5, "a stable run starts the count again"


@pytest.mark.parametrize(
    ("code", "cause"),
    [(-signal.SIGKILL, "SIGKILL"), (-signal.SIGSEGV, "SIGSEGV"), (1, "exit_1"), (0, "exit_0")],
)
def test_a_death_is_named_by_its_signal_or_exit_status(code: int, cause: str) -> None:
    assert _cause(code) == cause


@pytest.mark.parametrize(
    ("limits", "warned"),
    [((1024, 1_048_576), False), ((1024, 4096), True), ((65536, 65536), False)],
)
def test_open_files_are_raised_to_the_hard_limit_and_too_few_are_said(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    limits: tuple[int, int],
    warned: bool,
) -> None:
    current = list(limits)
    monkeypatch.setattr(resource, "getrlimit", lambda which: tuple(current))
    monkeypatch.setattr(resource, "setrlimit", lambda which, new: current.__setitem__(0, new[0]))
    settings = cast(
        Settings, SimpleNamespace(connections=ConnectionSettings(), upstream_max_connections=1024)
    )
    _raise_open_files_limit(settings)
    assert current[0] == limits[1]
    assert ("RLIMIT_NOFILE" in capsys.readouterr().err) is warned
