"""LoadBalancer.eject / return_instance: a caller's ejection, separate from health."""

from __future__ import annotations

import math

import pytest

from codomyrmex.service_mesh import (
    InstanceEjected,
    InstanceReturned,
    LoadBalancer,
    OutlierDetectionConfig,
    ServiceInstance,
)


def balancer(**options: object) -> LoadBalancer:
    lb = LoadBalancer(name="orders", **options)  # type: ignore[arg-type]
    for name in "abc":
        lb.register(ServiceInstance(name, "127.0.0.1", 8000 + ord(name)))
    return lb


def test_an_ejected_instance_is_not_picked_until_returned() -> None:
    lb = balancer()
    events: list[object] = []
    lb.subscribe(events.append)
    assert lb.eject("b") is True
    assert lb.eject("b") is False  # already out
    assert lb.is_ejected("b")
    assert {lb.get_instance().id for _ in range(9)} == {"a", "c"}  # type: ignore[union-attr]
    assert lb.get("b").healthy is True  # type: ignore[union-attr]
    assert lb.return_instance("b") is True
    assert lb.return_instance("b") is False
    assert {lb.get_instance().id for _ in range(9)} == {"a", "b", "c"}  # type: ignore[union-attr]
    ejected = [e for e in events if isinstance(e, InstanceEjected)]
    returned = [e for e in events if isinstance(e, InstanceReturned)]
    assert [(e.instance_id, e.reason, e.duration) for e in ejected] == [
        ("b", "instance_breaker", math.inf)
    ]
    assert [(e.instance_id, e.reason) for e in returned] == [("b", "instance_breaker")]


def test_ejection_and_health_are_separate_words() -> None:
    lb = balancer()
    lb.mark_healthy("a", False)  # the operator's
    assert lb.eject("a") is True
    assert lb.return_instance("a") is True
    assert lb.get("a").healthy is False  # type: ignore[union-attr]
    assert "a" not in {i.id for i in lb.healthy_instances}


def test_unknown_ids_and_bad_reasons() -> None:
    lb = balancer()
    assert lb.eject("zzz") is False
    assert lb.return_instance("zzz") is False
    with pytest.raises(ValueError, match="reason"):
        lb.eject("a", reason="")
    with pytest.raises(TypeError, match="reason"):
        lb.return_instance("a", reason=1)  # type: ignore[arg-type]


def test_an_outlier_ejection_is_not_ended_by_return_instance() -> None:
    now = [0.0]
    lb = balancer(
        clock=lambda: now[0],
        outlier_detection=OutlierDetectionConfig(consecutive_failures=1, max_ejection_percent=50),
    )
    inst = lb.acquire()
    assert inst is not None
    lb.release(inst, 0.0, RuntimeError("boom"))  # the detector ejects it
    assert lb.is_ejected(inst.id)
    assert lb.eject(inst.id) is False
    assert lb.return_instance(inst.id) is False  # the detector's timer decides
    assert lb.is_ejected(inst.id)
    now[0] = 31.0
    assert not lb.is_ejected(inst.id)
