"""mcaas-search: search the compression pipeline (prune, distill, cluster, quantize) of a PyTorch
classifier for the Pareto front of accuracy against size or latency, under an accuracy-drop limit.

Subpackages: ``backends`` (the ``Backend`` protocol, Optuna and Ray Tune behind it, ``run_study``),
``study`` (storage, records, a study's life across runs, records -> scored points), ``trials`` (one
trial: context, early stops, scoring, recording), ``workloads`` (datasets, models, checkpoints,
teacher training), ``reporting`` (tables, progress, the HTML report), ``bench`` (the benchmark),
``commands`` (argparse only). The ``mcaas-search`` command lives in ``search.cli``.
"""

import os as _os
from pathlib import Path as _Path


def checkout_pythonpath() -> str:
    """PYTHONPATH for a child process that runs in another folder and must import this package
    even from a source checkout that is not pip-installed: the checkout's root first, then the
    caller's own entries made absolute."""
    root = str(_Path(__file__).resolve().parent.parent)
    entries = [str(_Path(p).resolve()) for p in _os.environ.get("PYTHONPATH", "").split(_os.pathsep) if p]
    return _os.pathsep.join(dict.fromkeys([root, *entries]))
