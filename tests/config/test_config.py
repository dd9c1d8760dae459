"""Mesh.from_config: layout, formats, environment overrides, errors with paths, schema, reload."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from codomyrmex.service_mesh import (
    Bulkhead,
    CircuitState,
    LoadBalancerStrategy,
    Mesh,
    PercentageRetryBudget,
    ServiceInstance,
    ServiceProxy,
    TokenBucketRetryBudget,
)
from codomyrmex.service_mesh.config import (
    ConfigError,
    ConfigWatcher,
    json_schema,
    load_config,
    register_resolver,
    reload_on_sighup,
)

ROOT = Path(__file__).resolve().parents[2]

BASE = {
    "defaults": {
        "retry": {"max_retries": 2, "initial_delay": 0.0},
        "breaker": {"failure_threshold": 4},
        "balancing": {"strategy": "least_connections"},
    },
    "services": {
        "orders": {
            "retry": {"max_retries": 0},
            # Round robin: least connections would route around the failing instance
            # (its load penalty) before it failed twice in a row.
            "balancing": {"strategy": "round_robin"},
            "outlier_detection": {"consecutive_failures": 2, "max_ejection_percent": 100},
            "resolver": {"type": "static", "instances": ["127.0.0.1:9001", "127.0.0.1:9002"]},
        },
        "users": {},
    },
}


def errors_of(data: object, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Mesh.from_config(data, environ=environ or {})
    assert isinstance(caught.value, ValueError)
    return caught.value.errors


def test_defaults_are_shared_and_services_override_them_key_by_key() -> None:
    mesh = Mesh.from_config(BASE, environ={})
    orders, users = mesh.get_service("orders"), mesh.get_service("users")
    assert orders is not None and users is not None
    assert orders.retry_policy.max_retries == 0
    assert users.retry_policy.max_retries == 2
    assert orders.retry_policy.initial_delay == users.retry_policy.initial_delay == 0.0
    assert orders.circuit_breaker.config.failure_threshold == 4
    assert users.load_balancer.strategy is LoadBalancerStrategy.LEAST_CONNECTIONS
    detector = orders.load_balancer.outlier_detector
    assert detector is not None and detector.config.consecutive_failures == 2
    assert [i.address for i in orders.load_balancer.instances] == [
        "127.0.0.1:9001",
        "127.0.0.1:9002",
    ]
    assert users.load_balancer.instances == []
    assert mesh.get_circuit_breaker("orders") is orders.circuit_breaker
    # A key nobody sets keeps the library's default.
    assert users.retry_policy.max_delay == 10.0


def test_toml_yaml_and_json_files_give_the_same_mesh(tmp_path: Path) -> None:
    toml = tmp_path / "mesh.toml"
    toml.write_text(
        "[defaults.retry]\nmax_retries = 2\ninitial_delay = 0.0\n"
        "[services.orders.bulkhead]\nmax_concurrent = 3\n"
        '[services.orders.budget]\ntype = "percentage"\npercent = 25\n'
    )
    data = {
        "defaults": {"retry": {"max_retries": 2, "initial_delay": 0.0}},
        "services": {
            "orders": {
                "bulkhead": {"max_concurrent": 3},
                "budget": {"type": "percentage", "percent": 25},
            }
        },
    }
    js = tmp_path / "mesh.json"
    js.write_text(json.dumps(data))
    paths = [toml, js]
    yaml = pytest.importorskip("yaml")
    yml = tmp_path / "mesh.yaml"
    yml.write_text(yaml.safe_dump(data))
    paths.append(yml)
    for path in paths:
        proxy = Mesh.from_config(path, environ={}).get_service("orders")
        assert proxy is not None, path
        assert proxy.retry_policy.max_retries == 2
        assert proxy.bulkhead is not None and proxy.bulkhead.max_concurrent == 3
        budget = proxy.retry_policy.budget
        assert isinstance(budget, PercentageRetryBudget) and budget.percent == 25


def test_environment_variables_override_any_setting() -> None:
    environ = {
        "SERVICE_MESH__SERVICES__ORDERS__RETRY__MAX_RETRIES": "5",
        "SERVICE_MESH__DEFAULTS__BREAKER__TIMEOUT_SECONDS": "2.5",
        "SERVICE_MESH__SERVICES__USERS__BALANCING__STRATEGY": "random",
        "SERVICE_MESH__SERVICES__PAYMENTS__BUDGET__TYPE": "token_bucket",
        "SERVICE_MESH__HTTP__FAILURE_STATUSES": "[500, 503]",
        "UNRELATED": "1",
    }
    mesh = Mesh.from_config(BASE, environ=environ)
    orders, users = mesh.get_service("orders"), mesh.get_service("users")
    payments = mesh.get_service("payments")
    assert orders is not None and users is not None and payments is not None
    assert orders.retry_policy.max_retries == 5
    assert orders.circuit_breaker.config.timeout_seconds == 2.5
    assert users.load_balancer.strategy is LoadBalancerStrategy.RANDOM
    assert isinstance(payments.retry_policy.budget, TokenBucketRetryBudget)
    config = mesh.config
    assert config is not None
    assert config.transport_options()["failure_statuses"] == [500, 503]
    assert config.overrides["services.orders.retry.max_retries"].endswith("MAX_RETRIES")


def test_every_error_names_the_full_path_and_the_value_all_at_once() -> None:
    bad = {
        "defaults": {"breaker": {"failure_threshold": 0}},
        "services": {
            "orders": {
                "retry": {"max_retries": -1, "jitter": "sometimes"},
                "balancing": {"strategy": "fastest"},
                "outlier_detection": {"max_ejection_percent": 150},
                "resolver": {"type": "static", "instances": ["nohost"]},
                "breakr": {},
            }
        },
        "servces": {},
    }
    errors = errors_of(bad)
    assert "defaults.breaker.failure_threshold: must be >= 1, got 0" in errors
    assert "services.orders.retry.max_retries: must be >= 0, got -1" in errors
    assert any(
        e.startswith("services.orders.retry.jitter: ") and "'sometimes'" in e for e in errors
    )
    assert any(
        e.startswith("services.orders.balancing.strategy: ") and "'fastest'" in e for e in errors
    )
    assert (
        "services.orders.outlier_detection.max_ejection_percent: must be <= 100, got 150" in errors
    )
    assert any(
        e.startswith("services.orders.resolver.instances[0] ") and "'nohost'" in e for e in errors
    )
    assert any(e.startswith("services.orders.breakr: unknown section") for e in errors)
    assert any(e.startswith("servces: unknown section") for e in errors)


def test_rules_across_settings_are_reported_at_their_section() -> None:
    errors = errors_of(
        {
            "services": {
                "orders": {
                    "outlier_detection": {"consecutive_failures": None},
                    "bulkhead": {"max_queue": 2},
                }
            }
        }
    )
    assert any(
        e.startswith("services.orders.outlier_detection: ") and "consecutive_failures" in e
        for e in errors
    ), errors
    assert any(e.startswith("services.orders.bulkhead: ") and "max_concurrent" in e for e in errors)
    errors = errors_of({"services": {"orders": {"balancing": {"maglev_table_size": 100}}}})
    assert errors == ["services.orders.balancing: maglev_table_size must be a prime, got 100"]


def test_an_environment_error_names_the_variable_too() -> None:
    errors = errors_of(BASE, {"SERVICE_MESH__SERVICES__ORDERS__RETRY__MAX_RETRIES": "abc"})
    assert errors == [
        "services.orders.retry.max_retries "
        "(from $SERVICE_MESH__SERVICES__ORDERS__RETRY__MAX_RETRIES): must be an integer, got 'abc'"
    ]


def test_a_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("[services.orders.retry]\nmax_retries = -1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.errors == [
        f"{path}: services.orders.retry.max_retries: must be >= 0, got -1"
    ]
    path.write_text("[services.orders\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", environ={})


def test_the_json_schema_accepts_the_example_and_rejects_a_bad_value() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import tomllib

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    example = tomllib.loads((ROOT / "examples" / "mesh.toml").read_text())
    jsonschema.validate(example, schema)
    jsonschema.validate(BASE, schema)
    bad = {"services": {"orders": {"retry": {"max_retries": -1}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"services": {"orders": {"retry": {"tries": 1}}}}, schema)


def test_the_example_file_is_the_demo_config_and_loads() -> None:
    example = ROOT / "examples" / "mesh.toml"
    packaged = ROOT / "src" / "codomyrmex" / "service_mesh" / "demo" / "mesh.toml"
    assert example.read_text() == packaged.read_text()
    config = load_config(example, environ={})
    assert "catalog" in config.services


# -- reload ---------------------------------------------------------------------------


def _failing(instance: object) -> None:
    raise ConnectionError("down")


def _first_fails(instance: ServiceInstance) -> str:
    if instance.port == 9001:
        raise ConnectionError("down")
    return "ok"


def eject_first(proxy: ServiceProxy) -> None:
    """Call until 127.0.0.1:9001 (which fails every call) is ejected (bounded)."""
    for _ in range(20):
        if proxy.load_balancer.is_ejected("127.0.0.1:9001"):
            return
        try:
            proxy.call(_first_fails)
        except ConnectionError:
            pass
    raise AssertionError("127.0.0.1:9001 was never ejected")


def test_reload_keeps_breaker_state_connections_and_ejections() -> None:
    mesh = Mesh.from_config(BASE, environ={})
    orders = mesh.get_service("orders")
    assert orders is not None
    balancer, breaker = orders.load_balancer, orders.circuit_breaker
    # Eject 127.0.0.1:9001: two failures in a row on it (max_retries=0: one attempt a call).
    eject_first(orders)
    ejected = [i.id for i in balancer.ejected_instances]
    assert ejected == ["127.0.0.1:9001"]
    breaker.force_open()
    held = balancer.connection()
    instance = held.__enter__()
    try:
        changed = json.loads(json.dumps(BASE))
        changed["services"]["orders"]["retry"]["max_retries"] = 1
        changed["defaults"]["breaker"]["failure_threshold"] = 9
        changed["services"]["orders"]["outlier_detection"]["base_ejection_time"] = 60.0
        mesh.reload(changed)
        assert mesh.get_service("orders") is orders
        assert orders.load_balancer is balancer and orders.circuit_breaker is breaker
        assert orders.retry_policy.max_retries == 1
        assert breaker.config.failure_threshold == 9
        assert breaker.state is CircuitState.FORCED_OPEN
        assert [i.id for i in balancer.ejected_instances] == ejected
        detector = balancer.outlier_detector
        assert detector is not None and detector.config.base_ejection_time == 60.0
        assert balancer.get(instance.id) is instance and instance.connections == 1
    finally:
        held.__exit__(None, None, None)
    assert instance.connections == 0


def test_reload_keeps_an_open_breaker_open_and_its_failures() -> None:
    mesh = Mesh.from_config(
        {"services": {"orders": {"breaker": {"failure_threshold": 2}}}}, environ={}
    )
    breaker = mesh.get_circuit_breaker("orders")
    assert breaker is not None
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.execute(_failing, None)
    assert breaker.state is CircuitState.OPEN
    retry_after = breaker.retry_after()
    mesh.reload(
        {"services": {"orders": {"breaker": {"failure_threshold": 3, "timeout_seconds": 99}}}}
    )
    assert breaker.state is CircuitState.OPEN
    assert breaker.failure_count == 2
    assert breaker.retry_after() <= retry_after  # the open period runs on as scheduled


def test_an_invalid_reload_is_refused_whole_and_the_old_config_stays() -> None:
    mesh = Mesh.from_config(BASE, environ={})
    before = mesh.config
    orders = mesh.get_service("orders")
    assert orders is not None
    bad = json.loads(json.dumps(BASE))
    bad["services"]["users"]["retry"] = {"max_retries": 7}  # valid on its own
    bad["services"]["orders"]["retry"]["max_retries"] = -1  # invalid
    bad["services"]["extra"] = {}
    with pytest.raises(ConfigError, match=r"services\.orders\.retry\.max_retries: must be >= 0"):
        mesh.reload(bad)
    assert mesh.config is before
    users = mesh.get_service("users")
    assert users is not None and users.retry_policy.max_retries == 2
    assert mesh.get_service("extra") is None
    assert orders.retry_policy.max_retries == 0
    # A setting that only a new balancer could take is refused too, not half-applied.
    table = json.loads(json.dumps(BASE))
    table["services"]["orders"]["balancing"] = {"ring_replicas": 7}
    table["services"]["users"]["retry"] = {"max_retries": 7}
    with pytest.raises(ConfigError, match=r"services\.orders"):
        mesh.reload(table)
    assert users.retry_policy.max_retries == 2


def test_reload_adds_and_removes_services_and_instances() -> None:
    mesh = Mesh.from_config(BASE, environ={})
    orders = mesh.get_service("orders")
    assert orders is not None
    kept = orders.load_balancer.get("127.0.0.1:9002")
    assert kept is not None
    orders.load_balancer.mark_healthy("127.0.0.1:9002", False)
    changed = json.loads(json.dumps(BASE))
    del changed["services"]["users"]
    changed["services"]["stock"] = {}
    changed["services"]["orders"]["resolver"]["instances"] = ["127.0.0.1:9002", "127.0.0.1:9003"]
    mesh.reload(changed)
    assert mesh.get_service("users") is None and mesh.get_circuit_breaker("users") is None
    assert mesh.get_service("stock") is not None
    assert [i.id for i in orders.load_balancer.instances] == ["127.0.0.1:9002", "127.0.0.1:9003"]
    assert orders.load_balancer.get("127.0.0.1:9002") is kept and kept.healthy is False


def test_outlier_detection_switched_off_returns_the_ejected_and_on_again_works() -> None:
    mesh = Mesh.from_config(BASE, environ={})
    orders = mesh.get_service("orders")
    assert orders is not None
    eject_first(orders)
    off = json.loads(json.dumps(BASE))
    off["services"]["orders"]["outlier_detection"] = {"enabled": False}
    mesh.reload(off)
    assert orders.load_balancer.outlier_detector is None
    assert orders.load_balancer.ejected_instances == []
    mesh.reload(BASE)
    eject_first(orders)


def test_bulkhead_reconfigure_keeps_calls_in_flight_and_admits_waiters() -> None:
    bulkhead = Bulkhead(1, max_queue=1)
    bulkhead.acquire()
    granted = threading.Event()

    def wait() -> None:
        bulkhead.acquire()
        granted.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    while bulkhead.queued == 0:
        threading.Event().wait(0.001)  # until the waiter is queued (no time is asserted)
    bulkhead.reconfigure(2, max_queue=1)
    assert granted.wait(30)
    waiter.join()
    assert bulkhead.in_flight == 2 and bulkhead.max_concurrent == 2
    bulkhead.release()
    bulkhead.release()
    assert bulkhead.in_flight == 0


def test_the_watcher_reloads_on_a_file_change_and_keeps_the_old_on_error(tmp_path: Path) -> None:
    path = tmp_path / "mesh.toml"
    path.write_text("[services.orders.retry]\nmax_retries = 1\n")
    mesh = Mesh.from_config(path, environ={})
    seen: list[object] = []
    watcher = ConfigWatcher(mesh, on_reload=lambda config, error: seen.append(error))
    assert watcher.check() is False  # nothing changed
    path.write_text("[services.orders.retry]\nmax_retries = 3\n\n")
    assert watcher.check() is True
    orders = mesh.get_service("orders")
    assert orders is not None and orders.retry_policy.max_retries == 3
    path.write_text("[services.orders.retry]\nmax_retries = -3\n")
    assert watcher.check() is False
    assert isinstance(watcher.last_error, ConfigError)
    assert "services.orders.retry.max_retries: must be >= 0, got -3" in str(watcher.last_error)
    assert orders.retry_policy.max_retries == 3
    assert seen[0] is None and isinstance(seen[1], ConfigError)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX only")
def test_sighup_reloads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mesh.json"
    path.write_text(json.dumps({"services": {"orders": {"retry": {"max_retries": 1}}}}))
    mesh = Mesh.from_config(path, environ={})
    done = threading.Event()
    restore = reload_on_sighup(mesh, lambda config, error: done.set())
    try:
        path.write_text(json.dumps({"services": {"orders": {"retry": {"max_retries": 4}}}}))
        os.kill(os.getpid(), signal.SIGHUP)
        assert done.wait(30)
    finally:
        restore()
    orders = mesh.get_service("orders")
    assert orders is not None and orders.retry_policy.max_retries == 4


def test_a_registered_resolver_kind_is_checked_and_started() -> None:
    from codomyrmex.service_mesh.config import Field

    started: list[tuple[str, dict[str, object]]] = []

    class Fixed:
        def __init__(self, service: str, settings: dict[str, object], balancer: object) -> None:
            started.append((service, dict(settings)))
            self.balancer = balancer
            self.update(settings)

        def update(self, settings: dict[str, object]) -> None:
            count = settings["count"]
            assert isinstance(count, int)
            for n in range(count):
                self.balancer.register(ServiceInstance(f"n{n}", "127.0.0.1", 9000 + n))  # type: ignore[attr-defined]

        def close(self) -> None:
            pass

    register_resolver("fixed", Fixed, {"count": Field("int", "How many.", 1)}, required=("count",))
    mesh = Mesh.from_config(
        {"services": {"a": {"resolver": {"type": "fixed", "count": 2}}}}, environ={}
    )
    proxy = mesh.get_service("a")
    assert proxy is not None and len(proxy.load_balancer) == 2
    assert started == [("a", {"count": 2})]
    errors = errors_of({"services": {"a": {"resolver": {"type": "fixed", "count": 0}}}})
    assert errors == ["services.a.resolver.count: must be >= 1, got 0"]
    errors = errors_of({"services": {"a": {"resolver": {"type": "dns"}}}})
    assert (
        errors[0].startswith("services.a.resolver.type: must be one of ") and "'dns'" in errors[0]
    )


def test_the_readme_shows_the_example_file_verbatim() -> None:
    import re

    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration") :]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    assert block.group(1) == (ROOT / "examples" / "mesh.toml").read_text()


def test_breaker_reconfigure_switches_to_a_window_and_keeps_the_state() -> None:
    from codomyrmex.service_mesh import CircuitBreaker, CircuitBreakerConfig

    now = [0.0]
    breaker = CircuitBreaker("b", CircuitBreakerConfig(failure_threshold=3), clock=lambda: now[0])
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.execute(_failing, None)
    breaker.reconfigure(CircuitBreakerConfig(failure_threshold=2))
    assert breaker.state is CircuitState.CLOSED and breaker.failure_count == 2
    with pytest.raises(ConnectionError):
        breaker.execute(_failing, None)
    assert breaker.state is CircuitState.OPEN  # the third failure, now past the new threshold
    windowed = CircuitBreakerConfig(
        failure_rate_threshold=50, minimum_number_of_calls=2, sliding_window_size=4
    )
    breaker.reconfigure(windowed)
    assert breaker.state is CircuitState.OPEN and breaker.config is windowed
    now[0] = 31.0  # past the open period: probes close it, then the window judges
    for _ in range(2):
        breaker.execute(lambda _: "ok", None)
    assert breaker.state is CircuitState.CLOSED
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.execute(_failing, None)
    assert breaker.state is CircuitState.OPEN  # 2 of 4 calls failed: 50%
    with pytest.raises(TypeError, match="config must be a CircuitBreakerConfig"):
        breaker.reconfigure({"failure_threshold": 1})  # type: ignore[arg-type]


def test_balancer_reconfigure_keeps_connections_and_changes_the_strategy() -> None:
    from codomyrmex.service_mesh import LoadBalancer

    balancer = LoadBalancer()
    for port in (1, 2):
        balancer.register(ServiceInstance(f"i{port}", "127.0.0.1", port))
    with balancer.connection() as held:
        balancer.reconfigure(
            strategy=LoadBalancerStrategy.LEAST_CONNECTIONS,
            outlier_detection=None,
            slow_start=None,
            panic_threshold=50.0,
        )
        assert balancer.strategy is LoadBalancerStrategy.LEAST_CONNECTIONS
        assert held.connections == 1 and balancer.panic_threshold == 50.0
        picked = balancer.get_instance()
        assert picked is not None and picked.id != held.id  # least connections sees the held one
    assert held.connections == 0
    with pytest.raises(ValueError, match="panic_threshold"):
        balancer.reconfigure(outlier_detection=None, slow_start=None, panic_threshold=101)
