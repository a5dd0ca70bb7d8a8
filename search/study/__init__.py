"""Studies: where they are stored, the record format every part of mcaas-search reads and
writes, a study's life across runs and workers, and the one adapter from its records to scored
points (front, recommendation, closest infeasible trials).

Import public names from here (``from search.study import StudyInfo, trial_records``): the
modules behind them may move.
"""

from search.study.lifecycle import (
    ask_lock,
    awaited,
    check_resumable,
    counted,
    counted_samples,
    create_or_resume,
    fail_orphaned,
    heartbeat,
    mark_interrupted,
    profiles_to_run,
    queue_profiles,
    worker_id,
)
from search.study.records import (
    INTERRUPTED,
    StudyInfo,
    TrialRecord,
    is_interrupted,
    trial_record,
    trial_records,
    was_interrupted,
)
from search.study.scoring import (
    accuracy_drop,
    closest_records,
    feasible_front,
    front_records,
    objectives_of,
    recommended_record,
    scored_points,
    scored_records,
)
from search.study.storage import (
    STUDIES_DIR,
    check_storage,
    load_study,
    open_storage,
    storage_url,
)

__all__ = [
    "INTERRUPTED",
    "STUDIES_DIR",
    "StudyInfo",
    "TrialRecord",
    "accuracy_drop",
    "ask_lock",
    "awaited",
    "check_resumable",
    "check_storage",
    "closest_records",
    "counted",
    "counted_samples",
    "create_or_resume",
    "fail_orphaned",
    "heartbeat",
    "feasible_front",
    "front_records",
    "is_interrupted",
    "load_study",
    "mark_interrupted",
    "objectives_of",
    "open_storage",
    "profiles_to_run",
    "queue_profiles",
    "recommended_record",
    "scored_points",
    "scored_records",
    "storage_url",
    "trial_record",
    "trial_records",
    "was_interrupted",
    "worker_id",
]
