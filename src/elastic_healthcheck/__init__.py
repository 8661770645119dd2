"""elastic-healthcheck: the health-check server PyTorch elastic defines, done for real.

The torch-identical surface (``HealthCheckServer``, ``create_healthcheck_server``,
``get_logger``, ``get_log_level``), the liveness rule (``HealthStatus``, ``evaluate``) and
the progress helpers are imported eagerly and cost almost nothing. The servers (sockets,
threads, json) are imported on first use, so ``import elastic_healthcheck`` stays cheap
for a probe that runs every few seconds.
"""

from ._progress import HeartbeatFile as HeartbeatFile
from ._progress import HeartbeatFileReader as HeartbeatFileReader
from ._progress import ProgressTracker as ProgressTracker
from .health_check_server import HealthCheckServer as HealthCheckServer
from .health_check_server import create_healthcheck_server as create_healthcheck_server
from .log_level import get_log_level as get_log_level
from .logging import get_logger as get_logger
from .status import MAX_FUTURE_SKEW as MAX_FUTURE_SKEW
from .status import HealthStatus as HealthStatus
from .status import Verdict as Verdict
from .status import check_liveness as check_liveness
from .status import evaluate as evaluate

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from ._http import HTTPHealthCheckServer as HTTPHealthCheckServer

__version__ = "0.1.0"

__all__ = [
    "MAX_FUTURE_SKEW",
    "HTTPHealthCheckServer",
    "HealthCheckServer",
    "HealthStatus",
    "HeartbeatFile",
    "HeartbeatFileReader",
    "ProgressTracker",
    "Verdict",
    "__version__",
    "check_liveness",
    "create_healthcheck_server",
    "evaluate",
    "get_log_level",
    "get_logger",
]

# Imported on first attribute access (PEP 562): name -> module.
_LAZY = {
    "HTTPHealthCheckServer": "._http",
}


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
