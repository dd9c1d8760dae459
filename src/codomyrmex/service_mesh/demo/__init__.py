"""The ``service-mesh demo``: real HTTP backends on 127.0.0.1, the same requests without and with
the mesh.

``runner.run_demo(DemoOptions(...))`` runs it and returns the measurements; ``live``
draws it in the terminal (rich), ``report`` writes the HTML page. Nothing is
imported here, so the CLI can read the options without loading httpx or rich.
"""
