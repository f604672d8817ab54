"""Engines: where publications, history and presence live. `base` defines the contracts."""
