"""Published data on its way in: the channel's format check and its HTML policy.

Client publishes (`commands.publish`) and server API publishes (`http.api_methods`) both call
`format_problem` before anything happens and `publication_payload` right before `node.publish`, so
the two paths cannot drift apart, and history keeps what subscribers got.

`publication_html` (a channel option) applies to every string value of the data, through objects
and arrays at any depth; object keys, numbers, booleans and null are left alone:

- "keep": the data is published as sent (the default, as Centrifugo does);
- "escape": `markupsafe.escape`: `<b>` arrives as `&lt;b&gt;`, so a page that inserts the text as
  HTML shows the markup instead of running it;
- "strip": `nh3` (the ammonia sanitizer) with no tag allowed: tags and comments are removed, the
  content of `<script>`/`<style>` too, the text is kept, and what comes out is HTML-safe text
  (`&` is sent as `&amp;`), meant to be inserted as HTML.

Well-kept libraries do the HTML work; a hand-written filter is how sanitizers get bypassed. The
walk is a loop, not a recursion: data may be nested as deep as the JSON parser allows (1024).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import markupsafe
import nh3

from ..protocol.codec import raw_json
from ..protocol.messages import RawJSON
from ..protocol.options import ChannelOptions, PublicationHtml

__all__ = ["clean_html", "format_problem", "publication_payload"]

# Built once: building ammonia's sanitizer costs more than running it on a short string.
_STRIP_ALL_TAGS: Final = nh3.Cleaner(tags=set())


def _escape(text: str) -> str:
    return str(markupsafe.escape(text))


_CLEANERS: Final[dict[str, Callable[[str], str]]] = {
    "escape": _escape,
    "strip": _STRIP_ALL_TAGS.clean,
}


def format_problem(options: ChannelOptions, data: Any) -> str:
    """Why `data` (a parsed JSON value; None = absent) may not be published into a channel with
    `options`; "" when it may. The text is for the server log, the client gets 107."""
    if data is None:
        # Upstream rejects empty data in every format ("json" wants valid JSON, and none is not).
        return "empty publication data"
    if options.publication_data_format == "json_object" and type(data) is not dict:
        return "publication data must be a JSON object"
    # "json": `data` was parsed from JSON (a frame, a request body, or b64data checked by the
    # API), so it is valid JSON by construction.
    return ""


def clean_html(data: Any, mode: PublicationHtml) -> Any:
    """`data` with `mode` applied to every string value in it; "keep" returns `data` itself, the
    other modes a copy (the caller's value is not changed: a broadcast reuses it)."""
    if mode == "keep":
        return data
    clean = _CLEANERS[mode]
    if type(data) is str:
        return clean(data)
    if type(data) is not dict and type(data) is not list:
        return data
    root = dict(data) if type(data) is dict else list(data)
    pending: list[Any] = [root]  # copies (dicts and lists) whose values are still to be cleaned
    while pending:
        container = pending.pop()
        # Replacing values in place while iterating is fine: no key is added or removed.
        slots = container.items() if type(container) is dict else enumerate(container)
        for key, value in slots:
            kind = type(value)
            if kind is str:
                container[key] = clean(value)
            elif kind is dict or kind is list:
                copy = dict(value) if kind is dict else list(value)
                container[key] = copy
                pending.append(copy)
    return root


def publication_payload(options: ChannelOptions, data: Any, raw: bytes | None = None) -> RawJSON:
    """The bytes to publish: `data` cleaned by the channel's `publication_html`, compact JSON;
    or `raw`, the JSON text of `data` as a Protobuf client sent it, when nothing is cleaned and
    it holds no raw newline (a JSON subscriber's frame is split on newlines)."""
    if raw is not None and options.publication_html == "keep" and b"\n" not in raw:
        return RawJSON(raw)
    return raw_json(clean_html(data, options.publication_html))
