"""Start ``spawn`` children without re-running the parent's main module.

``multiprocessing``'s spawn start method imports the parent's ``__main__`` again in every
child (as ``__mp_main__``), so that functions defined there can be unpickled. For the
``tickvault`` command that means the whole command line, for a user's script whatever it
imports. tickvault's children (:mod:`tickvault.delivery.producer`) are given only module-level
functions of tickvault and plain data, so they never need it: while a child starts, the
main module is presented as a package ``__main__``, which spawn skips by design (the same
path ``python -m package`` takes).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
from collections.abc import Iterator

_SKIPPED_MAIN = "tickvault.__main__"


@contextlib.contextmanager
def without_main_reimport() -> Iterator[None]:
    """Within the block, processes started with ``spawn`` do not import ``__main__``."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    had_spec = "__spec__" in vars(main)
    saved = getattr(main, "__spec__", None)
    main.__spec__ = importlib.machinery.ModuleSpec(_SKIPPED_MAIN, None)
    try:
        yield
    finally:
        if had_spec:
            main.__spec__ = saved
        else:
            del main.__spec__
