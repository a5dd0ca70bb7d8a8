"""Names of the metrics recorded for a model (final and per stage).

Accuracies are in percent. ``bytes`` is the artifact file size, ``gzip_bytes`` its gzip size
(what clustering and unstructured sparsity improve). ``latency_ms`` is the median batch-1 latency
in ONNX Runtime and ``teacher_latency_ms`` the teacher's, measured interleaved in the same run,
each at its best thread count (``latency_threads``, ``teacher_latency_threads``: the intra-op
threads a deployer would set). ``ops`` counts the nodes of the graph ONNX Runtime runs after its
optimisations. ``val_lost`` and ``val_gained`` count the validation images only the teacher, or
only the model, classifies correctly: the paired drop and its confidence interval. ``epochs``
(of the distill stage) is what it trained where ``distill.size_boost`` lengthened it, and
``samples_seen`` the training samples it saw (optimizer steps x batch size: a trial's compute).
"""

VAL_ACC = "val_acc"
TEST_ACC = "test_acc"
BYTES = "bytes"
GZIP_BYTES = "gzip_bytes"
PARAMS = "params"
MACS = "macs"
LATENCY_MS = "latency_ms"
TEACHER_LATENCY_MS = "teacher_latency_ms"
LATENCY_THREADS = "latency_threads"
TEACHER_LATENCY_THREADS = "teacher_latency_threads"
OPS = "ops"
N_VAL = "n_val"
VAL_LOST = "val_lost"
VAL_GAINED = "val_gained"
N_TEST = "n_test"
EPOCHS = "epochs"
SAMPLES_SEEN = "samples_seen"
