"""The GPU check script (``python -m search.bench.gpu_check``) runs where there is a GPU; on a
machine with none it must say so in one line and exit 2, not fail half-way."""

from __future__ import annotations

import pytest
import torch

from search.bench import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check itself runs there")
def test_without_a_gpu_the_check_says_so_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert gpu_check.main(["--out", str(tmp_path / "g.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device" in err
    assert not (tmp_path / "g.json").exists()
