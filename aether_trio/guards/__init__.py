"""What one client may do to the server: answered synchronously, before anything is done.

    limits.py     every `[limits]` rule: commands, connections, publications, JSON depth
    ratelimit.py  token buckets
    origin.py     browser `Origin` patterns
    sanitize.py   `publication_html` and `publication_data_format` checks of published data

Importing the package loads nothing; import the module you need.
"""

__all__: list[str] = []
