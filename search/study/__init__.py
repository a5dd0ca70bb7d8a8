"""Studies: where they are stored, the record format every part of mcaas-search reads and
writes, and a study's life across runs and workers.

Import public names from here (``from search.study import StudyInfo, trial_records``): the
modules behind them may move.
"""

from search.study.lifecycle import (
    ask_lock,
    check_resumable,
    counted,
    create_or_resume,
    fail_orphaned,
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
    "ask_lock",
    "check_resumable",
    "check_storage",
    "counted",
    "create_or_resume",
    "fail_orphaned",
    "is_interrupted",
    "load_study",
    "mark_interrupted",
    "open_storage",
    "profiles_to_run",
    "queue_profiles",
    "storage_url",
    "trial_record",
    "trial_records",
    "was_interrupted",
    "worker_id",
]
