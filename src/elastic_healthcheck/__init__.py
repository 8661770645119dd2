"""elastic-healthcheck: the health-check server PyTorch elastic defines, done for real.

Every public name is imported on first use (PEP 562), so ``import elastic_healthcheck``
costs next to nothing and ``elastic-healthcheck probe``, which Docker may run every few
seconds, loads only the probe client.
"""

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from ._config.kinds import available_kinds as available_kinds
    from ._config.kinds import create_server as create_server
    from ._config.settings import ConfigurationError as ConfigurationError
    from ._engine.protocol import BaseProtocol as BaseProtocol
    from ._engine.protocol import Services as Services
    from ._engine.protocol import Transport as Transport
    from ._engine.server import SocketHealthCheckServer as SocketHealthCheckServer
    from ._http.server import HTTPHealthCheckServer as HTTPHealthCheckServer
    from ._tcp.server import TCPHealthCheckServer as TCPHealthCheckServer
    from .health_check_server import HealthCheckServer as HealthCheckServer
    from .health_check_server import create_healthcheck_server as create_healthcheck_server
    from .log_level import get_log_level as get_log_level
    from .logging import get_logger as get_logger
    from .progress import HeartbeatFile as HeartbeatFile
    from .progress import HeartbeatFileReader as HeartbeatFileReader
    from .progress import ProgressTracker as ProgressTracker
    from .status import MAX_FUTURE_SKEW as MAX_FUTURE_SKEW
    from .status import HealthStatus as HealthStatus
    from .status import Verdict as Verdict
    from .status import check_liveness as check_liveness
    from .status import evaluate as evaluate

__all__ = [
    "MAX_FUTURE_SKEW",
    "BaseProtocol",
    "ConfigurationError",
    "HTTPHealthCheckServer",
    "HealthCheckServer",
    "HealthStatus",
    "HeartbeatFile",
    "HeartbeatFileReader",
    "ProgressTracker",
    "Services",
    "SocketHealthCheckServer",
    "TCPHealthCheckServer",
    "Transport",
    "Verdict",
    "__version__",
    "available_kinds",
    "check_liveness",
    "create_healthcheck_server",
    "create_server",
    "evaluate",
    "get_log_level",
    "get_logger",
]

# Public name -> the module that defines it.
_LAZY = {
    # The base a team subclasses to serve its own protocol (docs/api.md), and what its
    # protocol is given: the engine's own names, public here.
    "SocketHealthCheckServer": "._engine.server",
    "BaseProtocol": "._engine.protocol",
    "Services": "._engine.protocol",
    "Transport": "._engine.protocol",
    "HTTPHealthCheckServer": "._http.server",
    "TCPHealthCheckServer": "._tcp.server",
    "ConfigurationError": "._config.settings",
    "available_kinds": "._config.kinds",
    "create_server": "._config.kinds",
    "HeartbeatFile": ".progress",
    "HeartbeatFileReader": ".progress",
    "ProgressTracker": ".progress",
    "HealthCheckServer": ".health_check_server",
    "create_healthcheck_server": ".health_check_server",
    "get_log_level": ".log_level",
    "get_logger": ".logging",
    "MAX_FUTURE_SKEW": ".status",
    "HealthStatus": ".status",
    "Verdict": ".status",
    "check_liveness": ".status",
    "evaluate": ".status",
}


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
