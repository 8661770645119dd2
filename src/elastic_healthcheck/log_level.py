"""The default log level, as ``torch.distributed.elastic.utils.log_level`` defines it."""

__all__ = ["get_log_level"]


def get_log_level() -> str:
    """Return the default log level: ``"WARNING"``, as PyTorch elastic does."""
    return "WARNING"
