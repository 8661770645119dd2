"""The ``elastic-healthcheck`` command: ``serve``, ``probe`` and ``torchrun``.

``main`` parses the command line and runs a command; ``probe`` is the client that
``elastic-healthcheck probe`` uses (HTTP and TCP targets, many at once).

May import: anything in the package, for this is an edge (argv in, exit status out).
Nothing in the package imports it.
"""
