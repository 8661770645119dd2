"""The torch integration against the real torch; every test here skips without it."""

from __future__ import annotations

import pytest

pytest.importorskip("torch.distributed.run", reason="the torch extra is not installed")
