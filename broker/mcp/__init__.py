"""The MCP protocol layer: MCP (Model Context Protocol) over Streamable HTTP, as the broker reads,
judges and relays it. Self-contained pieces the shared request pipeline plugs in as its third
protocol beside A2A and the LLM endpoint (docs/mcp.md):

* ``reading``: one reading of each JSON-RPC message and the operation policy judges;
* ``sessions``: ``Mcp-Session-Id`` and list cursors sealed to the caller and the server;
* ``events``: the SSE answer relayed event by event;
* ``listing``: ``tools/list``, ``prompts/list``, ``resources/list`` answers filtered by what the
  caller may use;
* ``aggregate``: the virtual server that offers several registered servers under one URL;
* ``servers``: the registration model of MCP servers (URL, the broker's own credential for it);
* ``errors`` and ``wire``: the refusals and how they look to an MCP client.

Nothing here imports the ``mcp`` SDK (decision 0045).
"""
