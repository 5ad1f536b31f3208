"""Domain exceptions. Each message is written for a radiologist and names the fix.

The core raises these; only the Qt layer turns them into dialogs and the CLI into
JSON ``error`` objects (``code`` + ``message``).
"""

from __future__ import annotations

from pathlib import Path


class CXRError(Exception):
    """Base class: ``code`` is a stable machine-readable identifier."""

    code = "error"

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else Path(path)

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


# --- reading images -------------------------------------------------------
class ImageReadError(CXRError):
    """The file could not be turned into pixels."""

    code = "unreadable_image"


class EmptyFileError(ImageReadError):
    code = "empty_file"


class TruncatedFileError(ImageReadError):
    code = "truncated_file"


class NotAnImageError(ImageReadError):
    code = "not_an_image"


class UnsupportedImageError(ImageReadError):
    """Readable, but in a form we do not handle (photometric interpretation, bit depth...)."""

    code = "unsupported_image"


class NoPixelDataError(ImageReadError):
    code = "no_pixel_data"


class MissingDecoderError(ImageReadError):
    """Compressed transfer syntax with no installed decoder; the message names the package."""

    code = "missing_decoder"


class ImageTooLargeError(ImageReadError):
    code = "image_too_large"


class InconsistentImageError(ImageReadError):
    """The header and the image data disagree (size, frame count, data length): refused, not guessed."""

    code = "inconsistent_image"


# --- models -------------------------------------------------------------------
class BundleError(CXRError):
    """A model bundle is malformed or unusable."""

    code = "invalid_bundle"


class BundleHashMismatchError(BundleError):
    code = "bundle_hash_mismatch"


class UnsafeWeightsError(BundleError):
    """Weights in a format that can execute code (pickle) are refused."""

    code = "unsafe_weights"


class UnknownModelError(CXRError):
    code = "unknown_model"


class InferenceError(CXRError):
    code = "inference_failed"


# --- training data and configuration (raised by cxr-train) -------------------------
class TrainingDataError(CXRError):
    """A training manifest, dataset folder or split file is unusable; the message says what to fix."""

    code = "invalid_training_data"


class TrainingConfigError(CXRError):
    """A training option or YAML config value is invalid."""

    code = "invalid_training_config"


# --- inference requests -----------------------------------------------------------
class AnalysisCancelledError(CXRError):
    """The user (or a newer request) cancelled an analysis; not a failure to report."""

    code = "cancelled"


class NoSegmentationModelError(CXRError):
    """Report-conditioned segmentation was asked for but no segmentation bundle is installed."""

    code = "no_segmentation_model"


class UnknownLabelError(CXRError):
    """A heatmap or threshold was requested for a label no loaded model predicts."""

    code = "unknown_label"


# --- exporting results ----------------------------------------------------
class ExportError(CXRError):
    """Results could not be written as a report, DICOM object or anonymised copy; the message says why."""

    code = "export_failed"


# --- site calibration profiles ------------------------------------------------------
class SiteProfileError(CXRError):
    """A site calibration profile file is missing, malformed or from a newer viewer."""

    code = "invalid_site_profile"


class SiteProfileMismatchError(SiteProfileError):
    """The profile was fitted to other weights (the bundle was updated): it no longer applies."""

    code = "site_profile_outdated"
