"""``python -m codomyrmex.service_mesh.simulation --help``."""

import sys

from .cli import main

sys.exit(main())
