"""The simulator: virtual time, determinism, and the two published results (reduced in size).

Every run is on virtual time with a fixed seed; the reductions keep each
published result's shape: Linkerd's case runs 20 s instead of 60 (still
~20,000 requests, the stuck backend for 10 s), Mitzenmacher's 60,000 requests.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from codomyrmex.service_mesh import LoadBalancerStrategy
from codomyrmex.service_mesh.outlier import OutlierDetectionConfig
from codomyrmex.service_mesh.simulation import (
    Backend,
    BackendError,
    Constant,
    Exponential,
    Fault,
    LogNormal,
    Policy,
    Result,
    Scenario,
    Uniform,
    linkerd_stuck_backend,
    main,
    percentile,
    power_of_two_choices,
    run_virtual,
    simulate,
    supermarket_time_in_system,
)

SEED = 1


# -- the virtual clock ----------------------------------------------------------------


def test_virtual_time_costs_no_wall_time_and_orders_events() -> None:
    order: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay)
        order.append((name, loop.time()))

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.gather(sleeper("late", 3600.0), sleeper("early", 5.0))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10.0), 2.5)
        return loop.time()

    began = time.monotonic()
    assert run_virtual(scenario(), start=100.0) == pytest.approx(3702.5)
    # An hour of virtual time: had the loop waited in real time, an hour would have passed.
    assert time.monotonic() - began < 3600.0
    assert order == [("early", 105.0), ("late", 3700.0)]


def test_a_stuck_simulation_says_so() -> None:
    async def forever() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(RuntimeError, match="stuck"):
        run_virtual(forever())


# -- the engine ------------------------------------------------------------------------


def small_scenario(**overrides: object) -> Scenario:
    backends = (
        Backend("a", Exponential(0.010)),
        Backend("b", Uniform(0.005, 0.015)),
        Backend("c", LogNormal(0.008, 0.3), faults=(Fault(2.0, 4.0, error_rate=1.0),)),
    )
    options: dict[str, object] = {
        "name": "small",
        "backends": backends,
        "rate": 300.0,
        "duration": 6.0,
        "timeout": 0.5,
    }
    options.update(overrides)
    return Scenario(**options)  # type: ignore[arg-type]


def test_same_seed_same_result_other_seed_other_result() -> None:
    scenario = small_scenario()
    one = simulate(scenario, Policy("round_robin"), seed=3)
    two = simulate(scenario, Policy("round_robin"), seed=3)
    other = simulate(scenario, Policy("round_robin"), seed=4)

    def strip(r: Result) -> tuple[object, ...]:
        return (r.requests, r.succeeded, r.mean, r.p99, r.picks)

    assert strip(one) == strip(two)
    assert strip(one) != strip(other)
    assert one.requests == pytest.approx(300 * 6, rel=0.1)


def test_error_faults_fail_requests_and_retries_recover_them() -> None:
    plain = simulate(small_scenario(), Policy("round_robin"), SEED)
    # c fails everything for a third of the run and gets a third of the requests: ~1/9 fail.
    assert plain.success_rate == pytest.approx(1 - 1 / 9, abs=0.02)
    retried = simulate(small_scenario(retries=2), Policy("round_robin"), SEED)
    assert retried.success_rate == 1.0  # a retry goes to another instance
    ejecting = Policy(
        "round_robin",
        outlier_detection=OutlierDetectionConfig(consecutive_failures=3, max_ejection_percent=50),
    )
    assert simulate(small_scenario(), ejecting, SEED).success_rate > 0.99


def test_fifo_servers_queue_requests() -> None:
    # One server at load 0.5 with exponential service: M/M/1, mean time in system 1 / (1 - 0.5).
    scenario = Scenario(
        name="mm1",
        backends=(Backend("only", Exponential(1.0), servers=1),),
        rate=0.5,
        duration=40_000.0,
        warmup=1_000.0,
    )
    result = simulate(scenario, Policy("round_robin"), SEED)
    assert result.mean == pytest.approx(2.0, rel=0.08)
    delay_only = Scenario(
        name="delay",
        backends=(Backend("only", Constant(1.0)),),
        rate=5.0,
        duration=200.0,
    )
    assert simulate(delay_only, Policy("random"), SEED).worst == pytest.approx(1.0)


def test_percentile_is_nearest_rank() -> None:
    data = [float(k) for k in range(1, 1001)]
    assert (percentile(data, 50), percentile(data, 99), percentile(data, 99.9)) == (
        500.0,
        990.0,
        999.0,
    )
    assert math.isnan(percentile([], 50))


def test_model_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        Fault(0, 1, error_rate=2.0)
    with pytest.raises(ValueError, match="latency or an error_rate"):
        Fault(0, 1)
    with pytest.raises(ValueError, match="rate"):
        small_scenario(rate=0)
    with pytest.raises(ValueError, match="unique"):
        small_scenario(backends=(Backend("x", Constant(1)), Backend("x", Constant(1))))
    with pytest.raises(ValueError, match="strategy"):
        Policy("fastest")
    assert Policy(LoadBalancerStrategy.MAGLEV).name == "maglev"


# -- published result 1: Linkerd / Finagle, one backend stuck -------------------------------


def test_linkerd_stuck_backend_published_shape() -> None:
    scenario = linkerd_stuck_backend(duration=20.0)
    results = {
        name: simulate(scenario, Policy(name), SEED)
        for name in ("round_robin", "power_of_two", "peak_ewma")
    }
    rr, p2c, ewma = results["round_robin"], results["power_of_two"], results["peak_ewma"]
    assert rr.requests > 19_000
    assert rr.success_rate == pytest.approx(0.955, abs=0.01)  # published: about 95%
    assert p2c.success_rate >= 0.99  # published: 99% least-loaded
    assert ewma.success_rate >= 0.999  # published: 99.9% Peak EWMA
    best = min(results.values(), key=lambda r: r.p99)
    assert rr.p99 >= 5 * best.p99
    assert rr.p99 == pytest.approx(1.0, abs=0.01)  # the timeout


# -- published result 2: the power of two choices -----------------------------------------


def test_supermarket_closed_forms() -> None:
    # 1 + 0.9**2 + 0.9**6 + 0.9**14 + 0.9**30 + ...
    assert supermarket_time_in_system(0.9, 2) == pytest.approx(2.6141, abs=1e-4)
    assert supermarket_time_in_system(0.9, 1) == pytest.approx(10.0)


def test_power_of_two_choices_mean_time_in_system() -> None:
    large = simulate(
        power_of_two_choices(servers=100, requests=60_000), Policy("power_of_two"), SEED
    )
    # The closed form is the limit of many servers: 100 are within 10% of it.
    assert large.mean == pytest.approx(2.61, rel=0.10)
    ten = power_of_two_choices(servers=10, requests=30_000)
    two_choices = simulate(ten, Policy("power_of_two"), SEED)
    one_choice = simulate(ten, Policy("random"), SEED)
    # With 10 servers the finite-pool penalty (order 1/servers) shows: about 3.1, not 2.61,
    # still three times better than one random choice (about 10).
    assert 2.61 < two_choices.mean < 3.4
    assert one_choice.mean == pytest.approx(10.0, rel=0.25)
    assert two_choices.mean * 2.5 < one_choice.mean


# -- the command -----------------------------------------------------------------------------


def test_main_prints_a_table_and_writes_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plot.png"
    status = main(
        [
            "--scenario",
            "linkerd",
            "--duration",
            "4",
            "--strategy",
            "round_robin",
            "--strategy",
            "peak_ewma",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    captured = capsys.readouterr()
    assert "round_robin" in captured.out and "peak_ewma" in captured.out
    assert "p99.9" in captured.out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "no plot" in captured.err
    else:
        assert out.read_bytes().startswith(b"\x89PNG")


def test_main_help_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--scenario" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["--strategy", "fastest", "--scenario", "linkerd", "--duration", "1"])
    assert exited.value.code == 2


def test_backend_error_is_an_exception() -> None:
    assert issubclass(BackendError, Exception)
