"""Outbound calls: every request the broker makes goes through one ``Transport``.

* ``transport``: the interface (``Transport``, ``TransportResponse``) the stages depend on.
* ``http11``: ``Http11Transport``, the broker's lean pooled HTTP/1.1 client that implements it
  (``pool``: its connections under the egress rules; ``connection``: one keep-alive connection
  and its httptools parser).
* ``client``: ``AiohttpTransport``, the aiohttp client it keeps for card fetches (decision 0071).
* ``egress``: the destinations it may connect to (SSRF rules), judged on every connection.
* ``errors``: the one table that turns transport failures into broker errors.
* ``credentials``: what proves a request to the upstream (hop token, broker-held credential).
* ``fake``: ``FakeTransport``, for tests.
"""
