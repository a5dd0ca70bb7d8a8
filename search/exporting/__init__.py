"""Export a finished trial: write its model in a format of ``EXPORT_FORMATS`` from its stored
artifact (no re-training), write a JSON sidecar, and verify the written model by loading it back
in the format's runtime and re-measuring test accuracy on the workload's test split.

Everything is written in a hidden folder beside ``--out`` and moved into place only after the
model passed verification, so a failed export leaves nothing half-written behind.

One module per job: ``selection`` (which trial), ``sources`` (the format and the stored file it
is made from), ``verification`` (the re-measured test accuracy), ``sidecar`` (the JSON beside the
model) and ``writing`` (the export itself). Import public names from here
(``from search.exporting import export_trial``): the modules behind them may move.
"""

from search.exporting.selection import Selection, best_trial, select_trial
from search.exporting.sidecar import SIDECAR_SUFFIX, input_description, library_versions
from search.exporting.sources import (
    FORMATS,
    export_format,
    fetch_file,
    fetch_files,
    stored_file,
    torch_artifact_of,
)
from search.exporting.verification import (
    check_accuracy,
    measure_accuracy,
    verify_test_accuracy,
    workload_data,
)
from search.exporting.writing import ExportResult, check_out_path, export_trial

__all__ = [
    "FORMATS",
    "SIDECAR_SUFFIX",
    "ExportResult",
    "Selection",
    "best_trial",
    "check_accuracy",
    "check_out_path",
    "export_format",
    "export_trial",
    "fetch_file",
    "fetch_files",
    "input_description",
    "library_versions",
    "measure_accuracy",
    "select_trial",
    "stored_file",
    "torch_artifact_of",
    "verify_test_accuracy",
    "workload_data",
]
