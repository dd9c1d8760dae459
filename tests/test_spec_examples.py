"""Every ```python block of the API reference (docs/api.md), run verbatim and in order.

docs/api.md keeps the promised examples of the API exactly as they were published.
The blocks are read at test time and never edited: the test only supplies the free
names they assume (``my_function``, ``handler_fn``, ...) and carries names (``lb``,
``cb``, ``policy``, ...) from one block to the next, as a reader following the
reference would.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from codomyrmex.service_mesh import (
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitState,
    LoadBalancer,
    LoadBalancerStrategy,
    NoHealthyInstanceError,
    RetryPolicy,
    ServiceInstance,
    ServiceProxy,
    get_circuit_breaker,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SPEC = REPO_ROOT / "docs" / "api.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def spec_blocks() -> list[str]:
    return BLOCK.findall(SPEC.read_text(encoding="utf-8"))


def block_index(marker: str) -> int:
    """The index of the one block containing ``marker`` (so the tests follow the spec's order)."""
    found = [i for i, text in enumerate(spec_blocks()) if marker in text]
    assert len(found) == 1, f"expected one spec block containing {marker!r}, found {found}"
    return found[0]


class Recorder:
    """A stand-in for the spec's ``my_function``: records its calls, returns a known value."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return ("my_function result", args, kwargs)


def free_names() -> dict[str, Any]:
    """The names the spec's snippets use without defining them."""
    handled: list[tuple[ServiceInstance, Any]] = []

    def handler_fn(instance: ServiceInstance, request: Any) -> Any:
        handled.append((instance, request))
        return {"served_by": instance.address, "echo": request}

    return {
        "__name__": "spec_examples",
        "my_function": Recorder(),
        "arg1": "first",
        "arg2": 2,
        "val": "value",
        "handler_fn": handler_fn,
        "handled": handled,
        "request_data": {"order_id": 1234},
    }


def _add_instance(ns: dict[str, Any]) -> None:
    """Give the carried-over ``lb`` (emptied by its own example) an instance to serve from."""
    ns["lb"].register(ServiceInstance(id="orders-1", host="10.0.0.9", port=9000))


def run_blocks(upto: int, *, literal: bool = False) -> dict[str, Any]:
    """Run spec blocks ``0..upto`` verbatim, in order, in one namespace.

    Unless ``literal``, an instance is registered in the carried-over ``lb`` before
    the proxy block runs: the load balancer example deregisters its only instance,
    so a reader trying the proxy would register one first. The text of the blocks
    is never changed.
    """
    blocks = spec_blocks()
    proxy_block = block_index("proxy.call(")
    ns = free_names()
    for i, text in enumerate(blocks[: upto + 1]):
        if i == proxy_block and not literal:
            _add_instance(ns)
        code = compile(text, f"{SPEC.name}[python block {i}]", "exec")
        exec(code, ns)
    return ns


def test_the_spec_has_the_expected_python_blocks() -> None:
    blocks = spec_blocks()
    assert len(blocks) >= 5
    for marker in (
        'CircuitBreaker("payment-service", config)',
        "lb = LoadBalancer(strategy=LoadBalancerStrategy.LEAST_CONNECTIONS)",
        "policy = RetryPolicy(",
        "proxy = ServiceProxy(",
        "@with_circuit_breaker(",
    ):
        block_index(marker)
    assert (
        block_index("CircuitBreaker(")
        < block_index("LoadBalancer(")
        < block_index("RetryPolicy(")
        < block_index("ServiceProxy(")
        < block_index("@with_retry")
    )


def test_every_block_runs_verbatim_in_order() -> None:
    ns = run_blocks(len(spec_blocks()) - 1)
    assert "result" in ns


def test_circuit_breaker_example() -> None:
    ns = run_blocks(block_index('CircuitBreaker("payment-service"'))
    cb = ns["cb"]
    assert isinstance(cb, CircuitBreaker)
    assert cb.name == "payment-service"
    assert ns["config"] == CircuitBreakerConfig(failure_threshold=3, timeout_seconds=10.0)
    assert cb.config is ns["config"]
    assert ns["result"] == ("my_function result", ("first", 2), {})
    assert ns["my_function"].calls == [(("first", 2), {})]
    # record_success() then record_failure(): one failure counted, far from the threshold of 3
    assert cb.state is CircuitState.CLOSED
    assert cb.can_execute() is True
    assert cb.failure_count == 1
    cb.record_failure()
    cb.record_failure()
    assert cb.state is CircuitState.OPEN


def test_load_balancer_example() -> None:
    ns = run_blocks(block_index("lb = LoadBalancer("))
    lb = ns["lb"]
    assert isinstance(lb, LoadBalancer)
    assert lb.strategy is LoadBalancerStrategy.LEAST_CONNECTIONS
    instance = ns["instance"]
    assert isinstance(instance, ServiceInstance)
    assert (instance.id, instance.address, instance.weight) == ("svc-1", "10.0.0.1:8080", 3)
    # The example deregisters svc-1 before picking, so there is nothing to select,
    # and marking the unknown id is a no-op rather than an error.
    assert ns["selected"] is None
    assert lb.instances == []
    assert lb.mark_healthy("svc-1", False) is False


def test_retry_policy_example() -> None:
    ns = run_blocks(block_index("policy = RetryPolicy("))
    policy = ns["policy"]
    assert isinstance(policy, RetryPolicy)
    assert (policy.max_retries, policy.initial_delay, policy.max_delay) == (3, 0.1, 10.0)
    assert (policy.exponential_base, policy.jitter) == (2.0, True)
    assert ns["result"] == ("my_function result", ("first",), {"kwarg": "value"})
    assert ns["my_function"].calls[-1] == (("first",), {"kwarg": "value"})
    delay = ns["delay"]
    assert isinstance(delay, float)
    assert 0.0 <= delay <= 0.1 * 2.0**2  # full jitter over min(10, 0.1 * 2 ** 2)


def test_service_proxy_example() -> None:
    ns = run_blocks(block_index("proxy = ServiceProxy("))
    proxy = ns["proxy"]
    assert isinstance(proxy, ServiceProxy)
    assert proxy.service_name == "orders"
    assert proxy.load_balancer is ns["lb"]
    assert proxy.circuit_breaker is ns["cb"]
    assert proxy.retry_policy is ns["policy"]
    assert ns["result"] == {"served_by": "10.0.0.9:9000", "echo": {"order_id": 1234}}
    served = ns["handled"]
    assert len(served) == 1
    assert served[0][0] is ns["lb"].get("orders-1")
    assert ns["lb"].get("orders-1").connections == 0


def test_service_proxy_example_as_the_spec_reads_it_top_to_bottom() -> None:
    """Read literally, the proxy's ``lb`` is the one the load balancer example left empty."""
    index = block_index("proxy = ServiceProxy(")
    with pytest.raises(NoHealthyInstanceError) as caught:
        run_blocks(index, literal=True)
    assert caught.value.service_name == "orders"


def test_decorator_example() -> None:
    ns = run_blocks(block_index("@with_circuit_breaker("))
    call_auth, fetch_data = ns["call_auth"], ns["fetch_data"]
    assert call_auth.__name__ == "call_auth"
    assert fetch_data.__name__ == "fetch_data"
    assert call_auth("token") is None
    assert fetch_data("https://example.invalid/data") is None
    breaker = call_auth.circuit_breaker
    assert breaker.name == "auth-service"
    assert breaker.config.failure_threshold == 3
    assert get_circuit_breaker("auth-service") is breaker
    policy = fetch_data.retry_policy
    assert (policy.max_retries, policy.initial_delay) == (5, 0.2)
