"""Who a connection is: connection and subscription tokens.

    tokens.py  `TokenVerifier`: the configured keys, claims of connection and subscription
               tokens (`ConnectionCredentials`, `SubscribeClaims`, server-side subscriptions)
    jws.py     HMAC tokens verified without PyJWT's generic decode (the connect hot path)
    jwks.py    keys fetched from a JWKS endpoint, cached, refreshed at a bounded rate
    errors.py  `TokenInvalid`, `TokenExpired`

Importing the package loads nothing; import the module you need.
"""

__all__: list[str] = []
