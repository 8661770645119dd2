"""The mirrored module is indistinguishable from torch's health_check_server to torch code."""

from __future__ import annotations

import inspect
import logging

import pytest

from elastic_healthcheck import health_check_server as mirrored
from elastic_healthcheck.health_check_server import HealthCheckServer, create_healthcheck_server

MODULE = "elastic_healthcheck.health_check_server"

# inspect.signature as it renders torch 2.13's objects (return annotations name the class).
# Our factory adds keyword-only parameters after these; see torch_visible().
SIGNATURES = {
    "HealthCheckServer": (
        "(alive_callback: collections.abc.Callable[[], int], port: int, timeout: int) -> None"
    ),
    "create_healthcheck_server": (
        "(alive_callback: collections.abc.Callable[[], int], port: int, timeout: int)"
        " -> {module}.HealthCheckServer"
    ),
}


# Parameters torch code cannot pass by accident: it passes three, positionally or by name.
ADDITION_KINDS = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)


def torch_visible(obj) -> inspect.Signature:
    """The signature without our keyword-only additions: what torch code can see."""
    signature = inspect.signature(obj)
    kept = [p for p in signature.parameters.values() if p.kind not in ADDITION_KINDS]
    return signature.replace(parameters=kept)


def test_module_all():
    assert mirrored.__all__ == ["HealthCheckServer", "create_healthcheck_server"]


def test_module_logger_is_named_after_the_module():
    assert mirrored.log.name == MODULE


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_signature(name):
    """Torch's parameters lead, unchanged: names, order, kinds, annotations, return."""
    expected = SIGNATURES[name].format(module=MODULE)
    assert str(torch_visible(getattr(mirrored, name))) == expected


def test_class_signature_has_no_additions():
    assert str(inspect.signature(HealthCheckServer)) == str(torch_visible(HealthCheckServer))


def test_factory_has_torchs_signature_and_nothing_more():
    """DESIGN: the mirrored factory keeps torch's shape; the kind-aware builder is create_server."""
    signature = inspect.signature(create_healthcheck_server)
    assert str(signature) == str(torch_visible(create_healthcheck_server))
    assert list(signature.parameters) == ["alive_callback", "port", "timeout"]


def test_class_annotations():
    assert list(HealthCheckServer.__annotations__) == ["_alive_callback", "_port", "_timeout"]


def test_constructor_stores_arguments_without_calling_the_callback():
    calls = []

    def callback() -> int:
        calls.append(1)
        return 0

    server = HealthCheckServer(callback, 29500, 60)
    assert (server._port, server._timeout) == (29500, 60)
    assert server._alive_callback is server.alive_callback
    assert calls == []


def test_keyword_arguments_as_the_agent_passes_them():
    def callback() -> int:
        return 0

    server = create_healthcheck_server(alive_callback=callback, port=1, timeout=60)
    assert type(server) is HealthCheckServer
    assert server.alive_callback is callback


def test_alive_callback_property_is_read_only():
    server = HealthCheckServer(lambda: 0, 0, 60)
    with pytest.raises(AttributeError):
        server.alive_callback = lambda: 1  # type: ignore[misc]


def test_start_logs_one_warning(caplog):
    caplog.set_level(logging.DEBUG, logger=MODULE)
    HealthCheckServer(lambda: 0, 0, 60).start()
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (MODULE, logging.WARNING, "No health check server started")
    ]


def test_stop_logs_info_and_is_idempotent(caplog):
    caplog.set_level(logging.DEBUG, logger=MODULE)
    server = HealthCheckServer(lambda: 0, 0, 60)
    for _ in range(3):
        server.stop()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "Stopping noop health check server.")
    ] * 3


def test_health_status_applies_the_rule_to_the_callback():
    server = HealthCheckServer(lambda: None, 0, 60)  # type: ignore[arg-type, return-value]
    assert server.health_status().reason == "callback returned NoneType"


@pytest.fixture(scope="module")
def torch_module():
    return pytest.importorskip("torch.distributed.elastic.agent.server.health_check_server")


class TestAgainstTorch:
    """Where torch is installed, compare with the real module, not with our notes about it."""

    def test_all(self, torch_module):
        assert mirrored.__all__ == torch_module.__all__

    @pytest.mark.parametrize("name", sorted(SIGNATURES))
    def test_signatures(self, torch_module, name):
        """Ours, less the keyword-only additions, is torch's whole signature."""
        ours = str(torch_visible(getattr(mirrored, name)))
        theirs = str(inspect.signature(getattr(torch_module, name)))
        assert ours.replace(MODULE, "X") == theirs.replace(torch_module.__name__, "X")

    def test_class_annotations(self, torch_module):
        assert HealthCheckServer.__annotations__ == torch_module.HealthCheckServer.__annotations__

    def test_public_methods(self, torch_module):
        def public(cls):
            return {n for n in vars(cls) if not n.startswith("__")}

        additions = public(HealthCheckServer) - public(torch_module.HealthCheckServer)
        assert public(torch_module.HealthCheckServer) <= public(HealthCheckServer)
        assert additions == {"health_status"}

    def test_same_log_records(self, torch_module):
        """Same levels and messages; captured on each logger itself, since torch may set
        its loggers not to propagate once its logging is configured."""

        class Collect(logging.Handler):
            def __init__(self) -> None:
                super().__init__(logging.DEBUG)
                self.records: list[logging.LogRecord] = []

            def emit(self, record: logging.LogRecord) -> None:
                self.records.append(record)

        captured = []
        for module in (torch_module, mirrored):
            logger = logging.getLogger(module.__name__)
            handler, level = Collect(), logger.level
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG)
            try:
                server = module.create_healthcheck_server(
                    alive_callback=lambda: 0, port=0, timeout=60
                )
                server.start()
                server.stop()
            finally:
                logger.removeHandler(handler)
                logger.setLevel(level)
            captured.append([(r.levelno, r.getMessage()) for r in handler.records])
        theirs, ours = captured
        assert len(ours) == 2
        assert ours == theirs
