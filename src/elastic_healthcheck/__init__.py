"""elastic-healthcheck: the health-check server PyTorch elastic defines, done for real.

The torch-identical surface (``HealthCheckServer``, ``create_healthcheck_server``,
``get_logger``, ``get_log_level``) and the liveness rule (``HealthStatus``, ``evaluate``)
are imported eagerly and cost almost nothing. The servers are imported on first use, so
``import elastic_healthcheck`` stays cheap for a probe that runs every few seconds.
"""

from .health_check_server import HealthCheckServer as HealthCheckServer
from .health_check_server import create_healthcheck_server as create_healthcheck_server
from .log_level import get_log_level as get_log_level
from .logging import get_logger as get_logger
from .status import MAX_FUTURE_SKEW as MAX_FUTURE_SKEW
from .status import HealthStatus as HealthStatus
from .status import Verdict as Verdict
from .status import check_liveness as check_liveness
from .status import evaluate as evaluate

__version__ = "0.1.0"

__all__ = [
    "MAX_FUTURE_SKEW",
    "HealthCheckServer",
    "HealthStatus",
    "Verdict",
    "__version__",
    "check_liveness",
    "create_healthcheck_server",
    "evaluate",
    "get_log_level",
    "get_logger",
]
