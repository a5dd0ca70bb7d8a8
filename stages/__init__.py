"""Compression stages: depth -> prune -> distill (+QAT) -> cluster -> export -> quantize, and measuring.

Each stage is a small class holding its frozen config with ``run(model, ctx) -> model``;
``run_pipeline`` runs a whole ``PipelineConfig``. Nothing here knows of Optuna or Ray.
"""

from stages._base import Model, OnnxFile, PipelineResult, Stage, StageRecord, timed
from stages._context import Context, Split, TaskData
from stages._graph import count_params_macs, device_of, weight_layers
from stages.cluster import Cluster
from stages.config import (
    ClusterConfig,
    DepthConfig,
    DistillConfig,
    ExportConfig,
    PipelineConfig,
    PruneConfig,
    QuantizeConfig,
)
from stages.criteria import CRITERIA, Criterion
from stages.depth import Depth
from stages.distill import Distill
from stages.errors import ConfigError, StageError
from stages.export import EXPORT_FORMATS, Export, ExportFormat
from stages.pipeline import measure_baseline, run_pipeline
from stages.prune import Prune
from stages.quant_modes import INT8_FORMATS, QUANT_MODES, QuantMode
from stages.quantize import Quantize
from stages.searchable import Condition, Hint, OneOf, Span

__all__ = [
    "CRITERIA",
    "EXPORT_FORMATS",
    "INT8_FORMATS",
    "QUANT_MODES",
    "Cluster",
    "ClusterConfig",
    "DepthConfig",
    "ConfigError",
    "Condition",
    "Context",
    "Depth",
    "Criterion",
    "Distill",
    "DistillConfig",
    "Export",
    "ExportConfig",
    "ExportFormat",
    "Hint",
    "Model",
    "OneOf",
    "OnnxFile",
    "PipelineConfig",
    "PipelineResult",
    "Prune",
    "PruneConfig",
    "QuantMode",
    "Quantize",
    "QuantizeConfig",
    "Span",
    "Split",
    "Stage",
    "StageError",
    "StageRecord",
    "TaskData",
    "count_params_macs",
    "device_of",
    "measure_baseline",
    "run_pipeline",
    "timed",
    "weight_layers",
]
