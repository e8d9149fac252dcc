"""Outbound calls: every request the broker makes goes through one ``Transport``.

* ``transport``: the interface (``Transport``, ``TransportResponse``) the stages depend on.
* ``client``: ``AiohttpTransport``, the broker's pooled client that implements it.
* ``egress``: the destinations it may connect to (SSRF rules), judged on every connection.
* ``errors``: the one table that turns transport failures into broker errors.
* ``credentials``: what proves a request to the upstream (hop token, broker-held credential).
* ``fake``: ``FakeTransport``, for tests.
"""
