"""mcaas-search: search the compression pipeline (prune, distill, cluster, quantize) of a PyTorch
classifier for the Pareto front of accuracy against size or latency, under an accuracy-drop limit.

The ``mcaas-search`` command lives in ``search.cli``; workloads (teacher model, data, metric) in
``search.workloads.workload``; teacher training in ``search.workloads.training``.
"""
