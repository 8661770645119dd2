"""The HTTP/1.1 health-check server: ``/healthz``, ``/livez``, ``/metrics``.

Modules, bottom up: ``wire`` (parsing request heads, writing responses; pure),
``prometheus`` (the text exposition format 0.0.4: families in, bytes out; pure),
``protocol`` (one connection's states, the route table; pure, no socket), ``server``
(:class:`~elastic_healthcheck.HTTPHealthCheckServer`, on the engine).

May import: the engine (``.._engine``), ``..status``, ``..logging``. Nothing here imports
the TCP server, the CLI or the torch integration.
"""
