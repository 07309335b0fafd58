"""The ``tickvault`` command line: one module per command group (``root`` holds the group).

``tickvault.cli:main`` is the console-script entry point; it stays here so installed scripts
keep working.
"""

from tickvault.cli.root import main

__all__ = ["main"]
