"""Results that leave the screen: the one-page PDF/PNG report, DICOM SR/SEG/SC/PDF objects, anonymised export.

Qt-free. The viewer and ``cxr-viewer analyze`` both call these modules, so a report
written from the menu and one written headless are the same file.
"""
