"""``python -m elastic_healthcheck``: the same as the ``elastic-healthcheck`` command."""

from ._cli.main import main

raise SystemExit(main())
