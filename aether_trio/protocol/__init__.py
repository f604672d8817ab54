"""Sans-IO implementation of the Centrifugo client protocol v2 (JSON): no sockets, no event loop."""
