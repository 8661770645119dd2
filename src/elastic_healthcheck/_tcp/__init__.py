"""The TCP health-check server: one status line per connection, then close.

Modules, bottom up: ``line`` (the status line and HAProxy's agent-check words; pure),
``protocol`` (the connection's states and transition table; pure, no socket), ``server``
(:class:`~elastic_healthcheck.TCPHealthCheckServer`, on the engine).

May import: the engine (``.._engine``), ``..status``, ``..logging``. Nothing here imports
the HTTP server, the CLI or the torch integration.
"""
