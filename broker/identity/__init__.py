"""Who is who: agent names, broker credentials, the broker's signing keys, agent cards and the
agent directory that registers them."""
