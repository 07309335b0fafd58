"""``tickvault positions ...`` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Position state: import, show, restore, reconcile.", no_args_is_help=True)
