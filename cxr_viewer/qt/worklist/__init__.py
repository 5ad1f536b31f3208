"""The triage worklist dock: a folder (or studies arriving over DICOM) analysed in the background, sorted by urgency.

- :mod:`.model`: the table model (rows, finding columns, sort and path roles);
- :mod:`.controller`: the core worklist on its own worker, the DICOM receiver, query / retrieve / send;
- :mod:`.panel` and :mod:`.dialogs`: the dock's widget, the network settings and the PACS query;
- :mod:`.install`: the dock, its shortcuts and menu on a main window.

The work itself (listing a folder, sending a study's results) is
:mod:`cxr_viewer.core.worklist.intake`.
"""

from cxr_viewer.qt.worklist.controller import DEFAULT_AE, DEFAULT_PORT, WorklistController
from cxr_viewer.qt.worklist.dialogs import NetworkSettingsDialog, QueryDialog
from cxr_viewer.qt.worklist.install import WORKLIST_HEIGHT_PX, install_worklist
from cxr_viewer.qt.worklist.model import (
    COL_ABNORMAL,
    COL_DATE,
    COL_LABELS,
    COL_MODALITY,
    COL_PATIENT,
    COL_QC,
    COL_READ,
    FIXED,
    LABEL_KEYS,
    LABEL_MARK,
    PATH_ROLE,
    SORT_ROLE,
    WorklistModel,
)
from cxr_viewer.qt.worklist.panel import MAX_COLUMN_PX, WorklistPanel

__all__ = [
    "COL_ABNORMAL", "COL_DATE", "COL_LABELS", "COL_MODALITY", "COL_PATIENT", "COL_QC", "COL_READ", "DEFAULT_AE",
    "DEFAULT_PORT", "FIXED", "LABEL_KEYS", "LABEL_MARK", "MAX_COLUMN_PX", "PATH_ROLE", "SORT_ROLE", "WORKLIST_HEIGHT_PX",
    "NetworkSettingsDialog", "QueryDialog", "WorklistController", "WorklistModel", "WorklistPanel", "install_worklist",
]
