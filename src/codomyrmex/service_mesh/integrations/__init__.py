"""Integrations of the mesh with other libraries: one module each, importing its library itself."""
