"""What e2e tests and benchmarks share to run the broker's world as real processes.

* ``testkit.procs``: a free loopback port, a child process that is ready-checked, logs to a file
  and is stopped for sure (``Process``); the argv of each program we start.
* ``testkit.config``: ``BrokerConfig``, a broker TOML file built from the test defaults and
  validated by the broker's own settings loader before anything starts.
* ``testkit.brokers``: a broker process from a ``BrokerConfig`` (admin token, URL, registration).
* ``testkit.redis_process``: private redis-servers, Redis Clusters and Sentinel sets (the tests'
  Redis fixtures are built on it); ``testkit.redis_server``: one server, persistent if asked.
* ``testkit.audit_files``: the records of an audit file, up to the zeros a live one keeps.

Nothing here is shipped with the broker (decision 0034).
"""
