"""One trial of a study, whichever backend runs it: the context shared by a worker's trials
(teacher outputs cached once per workload), the early stops, the scoring of the result against
the study's target and constraint, and the recording of the outcome in the study."""

from search.trials.context import (
    make_context,
    measure_baseline_into,
    trial_context,
    trial_threads,
)
from search.trials.trial import (
    Scoring,
    StudyView,
    TrialOutcome,
    TrialStopped,
    run_trial,
)
from search.trials.worker import (
    EARLY_STOP,
    LiveStudyView,
    WorkerSetup,
    run_and_record,
    worker_setup,
)

__all__ = [
    "EARLY_STOP",
    "LiveStudyView",
    "Scoring",
    "StudyView",
    "TrialOutcome",
    "TrialStopped",
    "WorkerSetup",
    "make_context",
    "measure_baseline_into",
    "run_and_record",
    "run_trial",
    "trial_context",
    "trial_threads",
    "worker_setup",
]
