"""``count_params_macs``: a structure counted once is not counted again, whatever its weights,
and any change of shape, layer, setting or input size is counted anew."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch_pruning as tp
from torch import nn

from stages._context import TaskData
from stages._graph import count_params_macs
from tests.support import count_calls
from tests.tiny_models import make_tiny_cnn

torch.set_num_threads(1)


def _count_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    monkeypatch.setattr("stages._graph._COUNTS", OrderedDict())  # nothing counted before
    return count_calls(monkeypatch, tp.utils, "count_ops_and_params")


def test_a_structure_is_counted_once_whatever_its_weights(data: TaskData, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_counts(monkeypatch)
    model = make_tiny_cnn()
    first = count_params_macs(model, data.example_input(1))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    assert count_params_macs(model.train(), data.example_input(1)) == first
    assert count_params_macs(make_tiny_cnn(seed=3), data.example_input(1)) == first
    assert len(calls) == 1


def test_another_shape_layer_setting_or_input_is_counted_again(
    data: TaskData, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_counts(monkeypatch)
    model = make_tiny_cnn()
    counts = [count_params_macs(model, data.example_input(1))]
    model.features[3][0].stride = (2, 2)  # fewer output pixels: fewer MACs, the same weights
    counts.append(count_params_macs(model, data.example_input(1)))
    model.fc = nn.Linear(32, 10, bias=False)  # one bias fewer
    counts.append(count_params_macs(model, data.example_input(1)))
    counts.append(count_params_macs(model, torch.zeros(1, 1, 16, 16)))  # 4x the pixels of 8 x 8
    assert len(calls) == 4
    assert counts[1][0] == counts[0][0] and counts[1][1] < counts[0][1]
    assert counts[2][0] == counts[1][0] - 10
    assert counts[3][0] == counts[2][0] and counts[3][1] > 3 * counts[2][1]
