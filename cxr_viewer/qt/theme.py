"""Dark reading-room theme: radiographs are read in dim rooms, a bright UI dazzles."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#3d8fd6"

_STYLESHEET = f"""
QMainWindow, QDockWidget {{ background: #1b1d20; }}
QDockWidget::title {{
    background: #25282c; padding: 4px 8px; color: #c9ccd1; font-weight: 600;
    border-bottom: 1px solid #111;
}}
QToolBar {{ background: #202226; border: none; border-bottom: 1px solid #111; spacing: 2px; padding: 2px; }}
QToolButton {{ color: #d6d8db; padding: 3px; border-radius: 3px; }}
QToolButton:hover {{ background: #33373d; }}
QToolButton:checked {{ background: #2b4b6b; }}
QToolButton#presetButton {{ padding: 3px 18px 3px 6px; border: 1px solid #3a3d42; }}
QStatusBar {{ background: #202226; color: #c9ccd1; border-top: 1px solid #111; }}
QStatusBar QLabel {{ color: #c9ccd1; padding: 0 6px; }}
QMenuBar {{ background: #202226; color: #d6d8db; }}
QMenuBar::item:selected {{ background: #33373d; }}
QMenu {{ background: #25282c; color: #d6d8db; border: 1px solid #111; }}
QMenu::item:selected {{ background: {ACCENT}; color: white; }}
QMenu::separator {{ height: 1px; background: #3a3d42; margin: 3px 6px; }}
QTreeView, QTableView, QListView {{
    background: #17191b; alternate-background-color: #1d1f22; color: #d6d8db;
    border: none; selection-background-color: #2b4b6b;
}}
QHeaderView::section {{ background: #25282c; color: #aeb2b8; border: none; padding: 3px 6px; }}
QLineEdit {{ background: #111315; color: #e3e5e8; border: 1px solid #3a3d42; border-radius: 3px; padding: 3px 6px; }}
QLineEdit:focus {{ border-color: {ACCENT}; }}
QProgressBar {{ background: #111315; border: 1px solid #3a3d42; border-radius: 3px; max-height: 12px; }}
QProgressBar::chunk {{ background: {ACCENT}; }}
"""


def dark_palette() -> QPalette:
    pal = QPalette()
    roles = {
        QPalette.ColorRole.Window: "#1b1d20",
        QPalette.ColorRole.WindowText: "#d6d8db",
        QPalette.ColorRole.Base: "#17191b",
        QPalette.ColorRole.AlternateBase: "#1d1f22",
        QPalette.ColorRole.ToolTipBase: "#25282c",
        QPalette.ColorRole.ToolTipText: "#e3e5e8",
        QPalette.ColorRole.Text: "#d6d8db",
        QPalette.ColorRole.Button: "#25282c",
        QPalette.ColorRole.ButtonText: "#d6d8db",
        QPalette.ColorRole.BrightText: "#ff5555",
        QPalette.ColorRole.Link: ACCENT,
        QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.PlaceholderText: "#7d828a",
    }
    for role, colour in roles.items():
        pal.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        pal.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b7078"))
    return pal


def apply_dark_theme(app: QApplication) -> None:
    """Fusion style + dark palette + a small stylesheet for docks, bars and trees."""
    app.setStyle("Fusion")
    app.setPalette(dark_palette())
    app.setStyleSheet(_STYLESHEET)
