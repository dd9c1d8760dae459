"""``python -m codomyrmex.service_mesh``: the ``service-mesh`` command."""

from .cli import main

raise SystemExit(main())
