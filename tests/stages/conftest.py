"""Set-up shared by every stage test: no test may warn, and a module-wide tiny task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stages._context import TaskData
from tests.tiny_models import no_warnings, tiny_task_data


@pytest.fixture(autouse=True)
def _fail_on_any_warning() -> Iterator[None]:
    """No stage test may warn: users must see no deprecation or user warnings from torch.onnx,
    torch.export or ONNX Runtime."""
    with no_warnings():
        yield


@pytest.fixture(scope="module")
def data() -> TaskData:
    """The default tiny task (256 / 64 / 64 samples), built once per test module."""
    return tiny_task_data(n_train=256, n_val=64, n_test=64)
