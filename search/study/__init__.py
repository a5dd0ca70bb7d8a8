"""Study storage and the record format every part of mcaas-search reads and writes.

Import public names from here (``from search.study import StudyInfo, trial_records``): the
modules behind them may move.
"""

from search.study.storage import (
    STUDIES_DIR,
    StudyInfo,
    TrialRecord,
    check_storage,
    load_study,
    open_storage,
    storage_url,
    trial_record,
    trial_records,
)

__all__ = [
    "STUDIES_DIR",
    "StudyInfo",
    "TrialRecord",
    "check_storage",
    "load_study",
    "open_storage",
    "storage_url",
    "trial_record",
    "trial_records",
]
