"""Per-instance breakers whose OPEN state ejects the instance from its balancer."""

from __future__ import annotations

import threading

from ...circuit_breaker import CircuitBreaker, CircuitBreakerConfig, CircuitState, StateListener
from ...load_balancer import LoadBalancer, ServiceInstance
from ...mesh import Mesh
from ...proxy import ServiceProxy

__all__ = ["InstanceEjector"]


class InstanceEjector:
    """Per-instance breakers whose OPEN state takes the instance out of its balancer.

    Breakers are named ``"<service>/<instance id>"`` (and registered in ``mesh`` when
    given). Ejection uses :meth:`LoadBalancer.eject`, never ``mark_healthy``; the
    instance is returned (:meth:`LoadBalancer.return_instance`) once its breaker
    admits probes, checked at each call (:meth:`reinstate_due`) and on every state
    change. The last available instance of a pool is never ejected.
    """

    __slots__ = ("_breakers", "_config", "_listeners", "_lock", "_mesh", "ejected")

    def __init__(self, config: CircuitBreakerConfig | None, mesh: Mesh | None) -> None:
        if config is not None and not isinstance(config, CircuitBreakerConfig):
            raise TypeError(f"instance_breaker must be a CircuitBreakerConfig, got {config!r}")
        self._config = config
        self._mesh = mesh
        self._lock = threading.Lock()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        # Internal API (read by ClientCore.start): the instances this took out, by key.
        self.ejected: dict[tuple[str, str], tuple[LoadBalancer, CircuitBreaker]] = {}
        self._listeners: list[tuple[CircuitBreaker, StateListener]] = []

    @property
    def enabled(self) -> bool:
        return self._config is not None

    def breaker(self, proxy: ServiceProxy, instance: ServiceInstance) -> CircuitBreaker | None:
        """The breaker of ``instance`` (created on first use), or None when not configured."""
        config = self._config
        if config is None:
            return None
        key = (proxy.service_name, instance.id)
        breaker = self._breakers.get(key)
        if breaker is not None:
            return breaker
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is None:
                name = f"{proxy.service_name}/{instance.id}"
                if self._mesh is None:
                    breaker = CircuitBreaker(name, config)
                else:
                    breaker = self._mesh.circuit_breaker(name, config)
                balancer = proxy.load_balancer

                def eject_while_open(
                    cb: CircuitBreaker, old: CircuitState, new: CircuitState
                ) -> None:
                    self._on_transition(key, balancer, cb, new)

                breaker.add_listener(eject_while_open)
                self._breakers[key] = breaker
                self._listeners.append((breaker, eject_while_open))
        return breaker

    def _on_transition(
        self,
        key: tuple[str, str],
        balancer: LoadBalancer,
        breaker: CircuitBreaker,
        new: CircuitState,
    ) -> None:
        if new is CircuitState.OPEN or new is CircuitState.FORCED_OPEN:
            self.eject(key, balancer, breaker)
        elif key in self.ejected:
            with self._lock:
                ejected = self.ejected.pop(key, None)
            if ejected is not None:
                balancer.return_instance(key[1])

    def eject(self, key: tuple[str, str], balancer: LoadBalancer, breaker: CircuitBreaker) -> None:
        """Take the instance out, unless it is the last available one or already out."""
        if key in self.ejected:
            return
        available = balancer.healthy_instances
        if len(available) <= 1 or not any(inst.id == key[1] for inst in available):
            return
        if balancer.eject(key[1]):
            with self._lock:
                self.ejected[key] = (balancer, breaker)

    def refused(
        self, proxy: ServiceProxy, instance: ServiceInstance, breaker: CircuitBreaker
    ) -> None:
        """An attempt met the instance's open breaker: make sure the instance is out."""
        self.eject((proxy.service_name, instance.id), proxy.load_balancer, breaker)

    def reinstate_due(self) -> None:
        """Return the ejected instances whose breaker now admits probes."""
        if not self.ejected:
            return
        with self._lock:
            ejected = list(self.ejected.items())
        for key, (balancer, breaker) in ejected:
            state = breaker.state  # reading it makes a due OPEN -> HALF_OPEN move
            if state is not CircuitState.OPEN and state is not CircuitState.FORCED_OPEN:
                with self._lock:
                    still = self.ejected.pop(key, None)
                if still is not None:
                    balancer.return_instance(key[1])

    def detach(self) -> None:
        """Stop watching the breakers and return every instance this ejected."""
        with self._lock:
            listeners, self._listeners = self._listeners, []
            ejected, self.ejected = self.ejected, {}
        for breaker, listener in listeners:
            breaker.remove_listener(listener)
        for (_, instance_id), (balancer, _) in ejected.items():
            balancer.return_instance(instance_id)
