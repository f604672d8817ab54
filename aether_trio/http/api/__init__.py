"""The server HTTP API: `POST /api/<method>` (Centrifugo's methods and shapes, `cent` works).

    routes.py       `ServerApi`: method table, roles, decoding, result and transport error modes
    requests.py     request bodies decoded into frozen attrs classes (field-named 400 errors)
    methods.py      publish, broadcast, presence, history, channels, info
    users.py        subscribe, unsubscribe, disconnect, refresh: acting on a user's connections
    errors.py       API error codes and their HTTP statuses
    glob.py         the `channels` method's pattern

Importing the package loads nothing; import the module you need.
"""

__all__: list[str] = []
