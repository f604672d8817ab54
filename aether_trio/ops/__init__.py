"""Operations commands: clients of a running server and the configuration it starts from.

    init.py         `aether init DIR`: a production config from the template production.toml
    probe.py        the probe's target (addresses and keys from the config) and its requests
    healthcheck.py  `aether healthcheck`: the steps, the report, Nagios exit codes
    cli.py          their command lines

This unit talks to the server only as its clients do (HTTP, WebSocket) and reads only the
configuration: it imports nothing of the server's internals (tests/test_architecture.py).
Importing the package loads nothing; import the module you need.
"""

__all__: list[str] = []
