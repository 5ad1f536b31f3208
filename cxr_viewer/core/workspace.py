"""The reader's workspace without Qt: which models run, the active site profile, the thresholds, the corrections.

One :class:`Workspace` per window, evented with psygnal (like napari's ``ViewerModel``):
the Qt controllers (the analysis controller, the worklist, the site calibration hook)
read it and listen to it instead of holding their own copies, so setting the site profile
or a threshold once reaches every surface. Persistence goes through a
:class:`~cxr_viewer.core.analysis.Settings` (the Qt layer passes QSettings).
"""

from __future__ import annotations

from typing import Any

from psygnal import Signal

from cxr_viewer.core.analysis import Settings, UserThresholds

__all__ = ["Workspace"]


def _names(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        value = [value] if value else []
    return frozenset(str(v) for v in (value or []) if v)


class Workspace:
    """The enabled models, the active site profile, the user's thresholds and the corrections store."""

    #: the enabled set changed (a model switched on or off, a site version used or rolled back)
    models_changed = Signal()
    #: the active site profile (a SiteProfile, or None)
    site_profile_changed = Signal(object)
    #: a threshold was set or reset: (model, label)
    thresholds_changed = Signal(str, str)

    def __init__(self, settings: Settings, *, corrections: Any = None) -> None:
        self.settings = settings
        self.thresholds = UserThresholds(settings)
        self._site_profile: Any = None
        self._corrections = corrections

    # ------------------------------------------------------------------ models
    @property
    def disabled_models(self) -> frozenset[str]:
        """Bundles the reader switched off (by name)."""
        return _names(self.settings.value("models/disabled", []))

    @property
    def enabled_models(self) -> frozenset[str]:
        """Bundles shipped switched off (a site fine-tune) that the reader switched on."""
        return _names(self.settings.value("models/enabled", []))

    def is_enabled(self, name: str, default: bool = True) -> bool:
        """The reader's choice for ``name``; ``default`` (the manifest's ``enabled``) when they made none."""
        if name in self.disabled_models:
            return False
        return True if name in self.enabled_models else bool(default)

    def set_enabled(self, choices: dict[str, bool]) -> None:
        """Switch models on or off by name (persisted); one ``models_changed``."""
        disabled, switched_on = set(self.disabled_models), set(self.enabled_models)
        for name, on in choices.items():
            (disabled.discard if on else disabled.add)(name)
            (switched_on.add if on else switched_on.discard)(name)
        self.settings.set_value("models/disabled", sorted(disabled))
        self.settings.set_value("models/enabled", sorted(switched_on))
        self.models_changed.emit()

    # ------------------------------------------------------------------ site profile
    @property
    def site_profile(self) -> Any:
        """The active :class:`~cxr_viewer.core.site_profile.SiteProfile`, or None."""
        return self._site_profile

    def set_site_profile(self, profile: Any) -> None:
        """Make ``profile`` (or None) the one every surface judges with."""
        self._site_profile = profile
        self.site_profile_changed.emit(profile)

    # ------------------------------------------------------------------ thresholds
    def threshold(self, model: str, sha256: str, label: str) -> float | None:
        """The reader's threshold of one finding of the model with these weights (None: none set)."""
        return self.thresholds.get(model, sha256, label)

    def set_threshold(self, model: str, sha256: str, label: str, value: float | None) -> None:
        """Set (or with ``None`` reset) the reader's threshold; persisted, then ``thresholds_changed``."""
        self.thresholds.set(model, sha256, label, value)
        self.thresholds_changed.emit(model, label)

    # ------------------------------------------------------------------ corrections
    @property
    def corrections(self) -> Any:
        """The one :class:`~cxr_viewer.core.corrections.CorrectionStore` (the ``corrections/dir`` setting's)."""
        if self._corrections is None:
            from cxr_viewer.core.corrections import CorrectionStore

            folder = str(self.settings.value("corrections/dir", "") or "")
            self._corrections = CorrectionStore(folder or None)
        return self._corrections
