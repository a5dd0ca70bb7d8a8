"""``StageError``: the stage and the blamed setting as fields, the message users read unchanged,
and both kept across processes (Ray and worker processes pickle errors)."""

from __future__ import annotations

import pickle

from stages.errors import StageError
from stages.prune_failures import PruneFailure


def test_a_stage_error_reads_stage_colon_message_and_keeps_its_fields() -> None:
    exc = StageError("quantize", "mode int8-static failed on fp32.onnx", setting="quantize.mode")
    assert str(exc) == "quantize: mode int8-static failed on fp32.onnx"
    assert (exc.stage, exc.message, exc.setting) == ("quantize", "mode int8-static failed on fp32.onnx", "quantize.mode")
    assert StageError("distill", "loss became NaN").setting is None


def test_stage_errors_survive_pickling_with_their_fields() -> None:
    back = pickle.loads(pickle.dumps(StageError("quantize", "rejected", setting="quantize.mode")))
    assert (type(back), str(back), back.stage, back.setting) == (StageError, "quantize: rejected", "quantize", "quantize.mode")
    failure = pickle.loads(pickle.dumps(PruneFailure("cannot prune layer 'merge'", "merge", ("merge", "fc"))))
    assert (type(failure), str(failure), failure.stage) == (PruneFailure, "prune: cannot prune layer 'merge'", "prune")
    assert (failure.layer, failure.group, failure.setting) == ("merge", ("merge", "fc"), None)
