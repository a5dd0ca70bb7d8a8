"""mcaas-search: search the compression pipeline (prune, distill, cluster, quantize) of a PyTorch
classifier for the Pareto front of accuracy against size or latency, under an accuracy-drop limit.

Subpackages: ``backends`` (the ``Backend`` protocol, Optuna and Ray Tune behind it, ``run_study``),
``study`` (storage, records, a study's life across runs, records -> scored points), ``trials`` (one
trial: context, early stops, scoring, recording), ``workloads`` (datasets, models, checkpoints,
teacher training), ``reporting`` (tables, progress, the HTML report), ``bench`` (the benchmark),
``commands`` (argparse only). The ``mcaas-search`` command lives in ``search.cli``.
"""
