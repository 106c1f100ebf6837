"""Names from the data used as file names: made safe, so nothing is written outside the chosen directory.

Run ids, benchmark names and parameters come from results documents that anyone can
write; one of them may hold ``../`` or be a thousand characters long. Every file name
perfwatch derives from such a string goes through :func:`safe_name`.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME = 120  # well under the 255 bytes a file name may have, with room for a prefix and suffix


def safe_name(text: str, replacement: str = "_", limit: int = MAX_NAME) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9._-]`` replaced, no leading dot
    (so never ``..`` or a hidden file), and at most ``limit`` characters (a long name keeps a
    hash of the whole, so two long names stay apart)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", replacement, text).strip("._-" + replacement) or "unnamed"
    if len(name) > limit:
        name = f"{name[: limit - 9]}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    return name
