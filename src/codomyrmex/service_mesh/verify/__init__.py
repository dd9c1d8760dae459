"""Check a mesh set-up against real faults: one bad instance of three, each fault mode."""
