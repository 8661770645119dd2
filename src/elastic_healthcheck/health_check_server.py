"""The health-check server interface of PyTorch elastic, importable without torch.

This module mirrors ``torch.distributed.elastic.agent.server.health_check_server``: the
same names, signatures, attributes, log messages and levels, so code written for torch
runs unchanged. ``HealthCheckServer`` itself is the no-op torch ships; the real servers
(:class:`~elastic_healthcheck.HTTPHealthCheckServer`,
:class:`~elastic_healthcheck.TCPHealthCheckServer`) subclass it.

The one addition, :meth:`HealthCheckServer.health_status`, applies the liveness rule to
this server's own callback and timeout; torch code never calls it, so it cannot notice it.
"""

# No ``from __future__ import annotations`` here: inspect.signature() must render these
# signatures exactly as it renders torch's.
import os
from collections.abc import Callable

from .logging import get_logger

# Spelled out rather than imported from typing, which would add ~7 ms to the import.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .status import HealthStatus

log = get_logger(__name__)

_ENV_PREFIX = "ELASTIC_HEALTHCHECK_"  # as _config.settings.ENV_PREFIX, which sits above

__all__ = ["HealthCheckServer", "create_healthcheck_server"]


class HealthCheckServer:
    """
    Interface for health check monitoring server, which can be extended
    by starting tcp/http server on the specified port.

    Args:

        alive_callback: Callable[[], int], callback to last progress time of agent

        port: int, port number to start tcp/http server

        timeout: int, timeout seconds to decide agent is alive/dead
    """

    _alive_callback: Callable[[], int]
    _port: int
    _timeout: int

    def __init__(self, alive_callback: Callable[[], int], port: int, timeout: int) -> None:
        self._alive_callback = alive_callback
        self._port = port
        self._timeout = timeout

    def start(self) -> None:
        """
        Unsupported functionality for PyTorch, doesn't start any health check server
        """
        log.warning("No health check server started")

    def stop(self) -> None:
        """
        Function to stop health check server
        """
        log.info("Stopping noop health check server.")

    @property
    def alive_callback(self) -> Callable[[], int]:
        return self._alive_callback

    def health_status(self) -> "HealthStatus":
        """Call the alive callback now and apply the liveness rule to its answer.

        Subclasses serve this value; override it to report more than the callback knows.

        Returns:
            The verdict: ``alive`` when the last progress time is at most ``timeout``
            seconds old, ``dead`` when older, ``unknown`` when the callback raised or
            returned something that is not an honest epoch time in seconds.
        """
        # status sits above this module in the layering: import it when first needed so
        # the torch-identical module imports nothing but the logging helper.
        from .status import HealthStatus, check_liveness

        # A status source (the torch integration's agent state) is a callback that knows
        # the whole verdict: ask it for that, not just for a time.
        source = getattr(self._alive_callback, "health_status", None)
        if callable(source):
            try:
                status: HealthStatus = source()
            except Exception as exc:
                reason = f"health_status() of the callback raised {type(exc).__name__}"
                return HealthStatus.unknown(float(self._timeout), reason)
            return status
        return check_liveness(self._alive_callback, self._timeout)


def create_healthcheck_server(
    alive_callback: Callable[[], int],
    port: int,
    timeout: int,
) -> HealthCheckServer:
    """
    creates health check server object

    By default this is torch's no-op :class:`HealthCheckServer`. The environment chooses
    a real one without changing code::

        ELASTIC_HEALTHCHECK_SERVER=http ELASTIC_HEALTHCHECK_HOST=127.0.0.1 torchrun ...

    With no ``ELASTIC_HEALTHCHECK_*`` variable set, nothing else is imported; with one,
    the server is built as :func:`elastic_healthcheck.create_server` builds it (which also
    takes a ``kind`` and options as arguments).

    Raises:
        ValueError: (``ConfigurationError``) a kind or an option from the environment
            cannot be used; the message says which and what is accepted.
    """
    if not any(name.startswith(_ENV_PREFIX) for name in os.environ):
        return HealthCheckServer(alive_callback, port, timeout)
    # The registry of kinds sits above this module: importing it only when the
    # environment asks keeps the torch-identical base free of everything above it.
    from ._config.kinds import build_server

    return build_server(alive_callback, port, timeout)
