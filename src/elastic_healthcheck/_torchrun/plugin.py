"""Plain ``torchrun`` gets the real health check: the ``torchrun.handlers`` entry point.

torch loads the entry points of the group ``torchrun.handlers`` when its rendezvous
package is first imported, which every torchrun launch does (``torch.distributed.run``
imports it before parsing its arguments): it calls each one and registers what it returns
as a rendezvous backend under the entry point's name. This package's entry point does its
real work as a side effect, and only when asked:

* ``TORCHELASTIC_HEALTH_CHECK_PORT`` is set (torch's own variable: the agent builds a
  health-check server only then);
* ``ELASTIC_HEALTHCHECK_TORCHRUN`` is not ``0`` (the way to turn it off);
* the process is torchrun's agent (``torchrun`` or ``python -m torch.distributed.run``),
  not a worker that imports torch's elastic packages, and nothing installed it already
  (``elastic-healthcheck torchrun`` does, before torch is imported).

Then it installs the integration exactly as the wrapper does, with its options from the
``ELASTIC_HEALTHCHECK_TORCHRUN_*`` variables, and says so in one line. Otherwise it does
nothing: no thread, no listener, no bootstrap, no server imported. It never breaks a
launch: whatever fails is one WARNING line naming it, and torch's behaviour goes on.

What it returns is registered as the backend ``elastic_healthcheck``; asking torchrun for
that backend (``--rdzv-backend elastic_healthcheck``) is a clear error, not a rendezvous.
"""

from __future__ import annotations

import os
import sys

__all__ = ["ENV_ENABLE", "activate", "torchrun_handler"]

ENV_ENABLE = "ELASTIC_HEALTHCHECK_TORCHRUN"  # 0 leaves plain torchrun as torch made it
ENV_PORT = "TORCHELASTIC_HEALTH_CHECK_PORT"
_RUN_MODULE = "torch.distributed.run"


def torchrun_handler() -> object:
    """The entry point torch calls (``torchrun.handlers``): install when asked, then hand
    torch a backend creator that refuses to be one."""
    try:
        activate()
    except Exception as exc:  # never stop a launch
        _warn("elastic-healthcheck could not start its health check (%s: %s)", exc)
    return _not_a_rendezvous_backend


def _not_a_rendezvous_backend(params: object) -> object:
    raise ValueError(
        "elastic_healthcheck is not a rendezvous backend: the package serves torchrun's "
        "health checks when TORCHELASTIC_HEALTH_CHECK_PORT is set; choose --rdzv-backend c10d"
    )


def activate(environ: dict[str, str] | None = None) -> bool:
    """Install the integration in torchrun's agent if asked to; ``True`` if it did."""
    env = os.environ if environ is None else environ
    if not env.get(ENV_PORT, "").strip() or not _is_torchrun_agent():
        return False
    if env.get(ENV_ENABLE, "").strip().lower() in ("0", "false", "no", "off"):
        return False  # turned off: nothing else is read, nothing can be wrong
    from .. import torchelastic
    from .._config.kinds import ConfigurationError
    from .._config.options import torchrun_options

    try:
        if not torchrun_options(environ=env).plugin:  # ELASTIC_HEALTHCHECK_TORCHRUN=0
            return False
    except ConfigurationError:
        pass  # install() below says what is wrong, in its one line

    if torchelastic._installed is not None:
        return False  # elastic-healthcheck torchrun, or a launcher's own install()
    try:
        integration = torchelastic.install()
    except Exception as exc:
        _warn(
            "elastic-healthcheck could not start its health check (%s: %s); torchrun runs "
            "as torch made it",
            exc,
        )
        return False
    _announce(integration.server)
    return True


def _is_torchrun_agent() -> bool:
    """torchrun (its module is being imported) or python -m torch.distributed.run."""
    if _RUN_MODULE in sys.modules:
        return True
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return getattr(spec, "name", None) == _RUN_MODULE


def _announce(server: object) -> None:
    from .._config.settings import where_served
    from ..logging import get_logger

    log = get_logger("elastic_healthcheck.torchelastic")
    if server is None:
        log.warning(
            "elastic-healthcheck is in torchrun's agent, but serves no health checks "
            "(see the error above); %s=0 turns it off",
            ENV_ENABLE,
        )
        return
    where, note = where_served(server)
    log.warning(
        "elastic-healthcheck: health checks for the elastic agent on %s (%s%s=0 turns it off)",
        where,
        note,
        ENV_ENABLE,
    )


def _warn(message: str, exc: BaseException) -> None:
    import logging

    try:
        from ..logging import get_logger

        log = get_logger("elastic_healthcheck.torchelastic")
    except Exception:  # LOGLEVEL is not a level: say it anyway
        log = logging.getLogger("elastic_healthcheck.torchelastic")
    log.warning(message, type(exc).__name__, exc)
