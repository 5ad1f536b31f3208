"""The window's named actions, menus and feature parts, and the reader's last folder.

Features (export, worklist, reading tools, site calibration) are built by the composition
root (:func:`cxr_viewer.qt.app.compose`) with the services they need. They add their
actions and menus here and find each other's parts here by name, never through the main
window's attributes, so the order they are installed in does not matter:
:meth:`ActionRegistry.when_part` runs a callback at once when the part is there, or as soon
as it is added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QMenu, QWidget

from cxr_viewer.qt.icons import icon

__all__ = ["ActionRegistry", "DuplicateNameError", "RecentFiles"]

MAX_RECENT = 10

Shortcut = str | QKeySequence.StandardKey | Sequence[str] | None


class DuplicateNameError(ValueError):
    """A second action, menu or part under a name already taken: two features would fight over one key."""


class ActionRegistry(Mapping[str, QAction]):
    """Named :class:`QAction` objects (the shortcuts dialog lists them all), named menus, and named parts.

    Read like a dict of actions (``registry["fit"]``); ``add``/``register`` refuse a name that is
    taken, so one feature can never silently replace another's action or shortcut.
    """

    def __init__(self, owner: QWidget) -> None:
        self._owner = owner  # actions live on it: their shortcuts work with the menu bar hidden
        self._actions: dict[str, QAction] = {}
        self._menus: dict[str, QMenu] = {}
        self._parts: dict[str, Any] = {}
        self._waiting: dict[str, list[Callable[[Any], None]]] = {}

    # ------------------------------------------------------------------ actions
    def add(self, key: str, text: str, slot: Callable[..., Any] | None = None, shortcut: Shortcut = None,
            icon_name: str | None = None, tip: str | None = None, checkable: bool = False) -> QAction:
        """A new action under ``key``: shortcut(s), icon, tooltip naming the keys, ``slot`` on trigger."""
        self._free(self._actions, key, "action")
        action = QAction(text, self._owner)
        if shortcut is not None:
            if isinstance(shortcut, QKeySequence.StandardKey):
                action.setShortcuts(shortcut)
            elif isinstance(shortcut, str):
                action.setShortcut(QKeySequence(shortcut))
            else:
                action.setShortcuts([QKeySequence(s) for s in shortcut])
        if icon_name:
            action.setIcon(icon(icon_name))
        action.setCheckable(checkable)
        keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in action.shortcuts())
        action.setToolTip(f"{tip or text.replace('&', '')}" + (f"  ({keys})" if keys else ""))
        action.setStatusTip(tip or text.replace("&", ""))
        if slot is not None:
            action.triggered.connect(slot)
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        return self.register(key, action)

    def register(self, key: str, action: QAction) -> QAction:
        """An action made elsewhere (a dock's toggle, a menu entry) under ``key``; its shortcut works window-wide."""
        self._free(self._actions, key, "action")
        self._owner.addAction(action)
        self._actions[key] = action
        return action

    def __getitem__(self, key: str) -> QAction:
        return _named(self._actions, key, "action")

    def __iter__(self) -> Iterator[str]:
        return iter(self._actions)

    def __len__(self) -> int:
        return len(self._actions)

    # ------------------------------------------------------------------ menus
    def add_menu(self, key: str, menu: QMenu) -> QMenu:
        """Name a menu (``"file"``, ``"tools"``, ``"panels"``...) so features can add entries to it."""
        self._free(self._menus, key, "menu")
        self._menus[key] = menu
        return menu

    def menu(self, key: str) -> QMenu:
        return _named(self._menus, key, "menu")

    # ------------------------------------------------------------------ parts
    def add_part(self, key: str, part: Any) -> Any:
        """A feature's part (the worklist panel, current | prior...) under ``key``; callbacks waiting for it run now."""
        self._free(self._parts, key, "part")
        self._parts[key] = part
        for callback in self._waiting.pop(key, []):
            callback(part)
        return part

    def part(self, key: str) -> Any:
        """The part under ``key``, or None when that feature is not installed."""
        return self._parts.get(key)

    def when_part(self, key: str, callback: Callable[[Any], None]) -> None:
        """``callback(part)`` now when ``key`` is there, else once it is added (never when it never is)."""
        if key in self._parts:
            callback(self._parts[key])
        else:
            self._waiting.setdefault(key, []).append(callback)

    @staticmethod
    def _free(names: Mapping[str, Any], key: str, kind: str) -> None:
        if key in names:
            raise DuplicateNameError(f"an {kind} named {key!r} is already registered; each {kind} needs its own name")


def _named(names: Mapping[str, Any], key: str, kind: str) -> Any:
    try:
        return names[key]
    except KeyError:
        raise KeyError(f"no {kind} named {key!r}; known: {', '.join(sorted(names))}") from None


class RecentFiles(QObject):
    """The reader's recently opened files (kept in the settings) and the folder the file dialogs start in."""

    def __init__(self, settings: QSettings, *, persist: bool = True, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.persist = persist

    def files(self) -> list[Path]:
        value = self.settings.value("recent_files", [], type=list) or []
        return [Path(v) for v in value if v]

    def add(self, path: Path) -> None:
        if not self.persist:
            return
        items = [str(path.resolve())] + [str(p) for p in self.files() if str(p) != str(path.resolve())]
        self.settings.setValue("recent_files", items[:MAX_RECENT])

    def clear(self) -> None:
        self.settings.remove("recent_files")

    def last_dir(self) -> str:
        """Where open and save dialogs start: the folder of the last file opened, else the home folder."""
        recent = self.files()
        return str(recent[0].parent) if recent else str(Path.home())
