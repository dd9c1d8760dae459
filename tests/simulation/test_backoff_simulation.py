"""The AWS backoff simulation: its engine checked exactly, then the article's shape.

Everything runs on virtual time with seeded RNGs, so every number is
reproducible and the whole file runs in well under a second of CPU per test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from codomyrmex.service_mesh.simulation.backoff import (
    Contention,
    ModeResult,
    compare,
    format_table,
    main,
    simulate,
)

# -- the engine ---------------------------------------------------------------------------------


def test_without_jitter_one_client_wins_per_round() -> None:
    """In lockstep every round is a tie the resource breaks: n + (n-1) + ... + 1 calls."""
    setup = Contention(clients=10, window=0.001, latency=0.02, base=0.005, cap=0.1)
    run = simulate("none", setup)
    assert run.calls == 55
    # The last client retried 9 times: each retry costs the round trip plus the backoff.
    waits = [0.02 + min(0.1, 0.005 * 2**k) for k in range(9)]
    assert run.completion == pytest.approx(sum(waits))
    assert run.unfinished == 0


def test_a_zero_window_means_no_contention() -> None:
    for mode in ("none", "full", "equal", "decorrelated"):
        run = simulate(mode, Contention(clients=50, window=0.0))
        assert (run.calls, run.completion, run.unfinished) == (50, 0.0, 0)


def test_a_lone_client_succeeds_at_once() -> None:
    assert simulate("full", Contention(clients=1)).calls == 1


def test_max_attempts_bounds_a_run_that_could_never_finish() -> None:
    """A resource busy for ever after its first attempt: the others give up."""
    setup = Contention(clients=3, window=1e9, max_attempts=5)
    run = simulate("full", setup)
    assert run.calls == 1 + 2 * 5
    assert run.unfinished == 2


def test_runs_are_reproducible_from_their_seed() -> None:
    setup = Contention(clients=30)
    assert simulate("decorrelated", setup, seed=4) == simulate("decorrelated", setup, seed=4)
    assert simulate("full", setup, seed=4) != simulate("full", setup, seed=5)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        simulate("exponential")
    with pytest.raises(ValueError, match="clients"):
        Contention(clients=0)
    with pytest.raises(ValueError, match="window"):
        Contention(window=-1.0)


# -- the AWS article's shape -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def results() -> dict[str, ModeResult]:
    return {r.mode: r for r in compare(Contention(), runs=10)}


def test_no_jitter_is_far_worst(results: dict[str, ModeResult]) -> None:
    jittered = [results[m] for m in ("full", "equal", "decorrelated")]
    assert results["none"].calls > 5 * max(r.calls for r in jittered)
    assert results["none"].completion > 50 * max(r.completion for r in jittered)


def test_full_and_decorrelated_jitter_do_the_least_work(results: dict[str, ModeResult]) -> None:
    for best in ("full", "decorrelated"):
        for other in ("none", "equal"):
            assert results[best].calls < results[other].calls, (best, other)


def test_full_and_decorrelated_jitter_also_finish_first(results: dict[str, ModeResult]) -> None:
    for best in ("full", "decorrelated"):
        assert results[best].completion < results["equal"].completion


def test_every_client_finished(results: dict[str, ModeResult]) -> None:
    assert all(r.unfinished == 0 for r in results.values())


# -- the command ----------------------------------------------------------------------------------


def test_main_prints_one_row_per_jitter_mode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--clients", "20", "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "20 clients" in out
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["none", "full", "equal", "decorrelated"]


def test_main_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--cap", "-1"])
    assert caught.value.code == 2
    assert "cap" in capsys.readouterr().err


def test_format_table_flags_clients_that_gave_up() -> None:
    table = format_table([ModeResult("none", 10.0, 1.0, 3)], clients=5)
    assert "3 clients gave up" in table


def test_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "codomyrmex.service_mesh.simulation.backoff", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "decorrelated" in done.stdout
