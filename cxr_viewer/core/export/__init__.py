"""Report files and DICOM objects written from the viewer's results (no Qt)."""
