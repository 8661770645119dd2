"""Configuration: every setting read once, from flags, arguments and the environment.

``settings`` is the table: each value a command reads, its flag, ``install()`` argument,
``ELASTIC_HEALTHCHECK_*`` variable and default, the one precedence rule (argument >
variable > default) and the parsers, with one message format for every source. ``kinds``
maps a kind name (``http``, ``tcp``, ``package.module:Class``, an entry point of
``elastic_healthcheck.servers``) to its class, imported on first use, and builds a server
with options from keyword arguments and ``ELASTIC_HEALTHCHECK_<OPTION>`` variables.
``options`` turns all of it into the typed options of ``serve`` and the torch integration.

Inside, imports point down: ``settings`` < ``kinds`` < ``options``.

May import: ``..health_check_server`` and ``..logging``. Servers are named by strings and
imported only when first built, so importing this package imports no server.
"""
