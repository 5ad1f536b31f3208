"""Finding names as a user types them: case, punctuation and a unique prefix are forgiven.

``Tuberculosis (lesion score)`` is reached by ``tuberculosis``, ``TB``-free typing such as
``tuberculosis-lesion``, or ``pleural`` for ``Pleural_Thickening``. When nothing (or more
than one finding) matches, the error lists the exact names so the user can copy one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cxr_viewer.core.errors import UnknownLabelError


def normalise(name: str) -> str:
    """Lower case, every run of non-alphanumerics one space: ``Pleural_Thickening`` -> ``pleural thickening``."""
    return " ".join(re.split(r"[^0-9a-z]+", str(name).lower())).strip()


def match_label(query: str, names: Iterable[str]) -> str:
    """The one finding name ``query`` means; raises :class:`UnknownLabelError` listing the exact names.

    Order of preference: the exact name; the same name ignoring case and punctuation;
    the one name that starts with the query (words compared the same way).
    """
    known = list(dict.fromkeys(str(n) for n in names))
    if query in known:
        return query
    q = normalise(query)
    if q:
        same = [n for n in known if normalise(n) == q]
        if same:
            return same[0]  # one label in several models (e.g. Pneumonia / pneumonia): the engine picks the model
        prefix = [n for n in known if normalise(n).startswith(q)]
        distinct = list(dict.fromkeys(normalise(n) for n in prefix))
        if len(distinct) == 1:
            return prefix[0]
        if len(distinct) > 1:
            raise UnknownLabelError(
                f"{query!r} could mean several findings: {', '.join(repr(n) for n in prefix)}. "
                "Type more of the name.")
    listing = ", ".join(repr(n) for n in known) or "none (no classifier is loaded)"
    raise UnknownLabelError(f"No finding is called {query!r}. The loaded models predict: {listing}.")
