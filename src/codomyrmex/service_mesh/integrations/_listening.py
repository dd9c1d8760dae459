"""The one way an integration listens to a mesh: subscribe once, unsubscribe on close.

Standard library only; the metric, tracing and monitoring integrations build on it.
"""

from __future__ import annotations

from .._validate import check_instance
from ..events import Event, EventListener
from ..mesh import Mesh, default_mesh

__all__ = ["MeshListener"]


class MeshListener:
    """Base of an integration fed by the events of one :class:`Mesh`.

    The subclass builds its own state, then calls :meth:`_listen` last in ``__init__``
    (so no event arrives half-built); :meth:`close` unsubscribes.
    """

    mesh: Mesh
    _listener: EventListener

    def _listen(self, mesh: Mesh | None) -> None:
        """Subscribe :meth:`observe` to ``mesh`` (None: the default mesh)."""
        self.mesh = mesh if mesh is not None else default_mesh()
        check_instance("mesh", self.mesh, Mesh)
        self._listener = self.observe  # one bound method, so close() removes exactly it
        self.mesh.subscribe(self._listener)

    def observe(self, event: Event) -> None:
        """Take one event of the mesh (or of any component it is subscribed to)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop receiving the mesh's events."""
        self.mesh.unsubscribe(self._listener)
