"""Configuration: server kinds by name, and options from arguments and the environment.

``kinds`` maps a kind name (``http``, ``tcp``, ``package.module:Class``, an entry point of
``elastic_healthcheck.servers``) to its class, imported on first use, and builds a server
with options from keyword arguments and ``ELASTIC_HEALTHCHECK_<OPTION>`` variables.

May import: ``..health_check_server`` and ``..logging``. Servers are named by strings and
imported only when first built, so importing this package imports no server.
"""
