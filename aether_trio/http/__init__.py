"""The internal HTTP listener (default 127.0.0.1:9000): server API, operator commands, metrics,
health. Hypercorn's Trio worker does the HTTP; `asgi` is a small router of pure route functions."""
