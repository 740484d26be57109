"""`lazarus-actor`: a rollout actor process that joins a learner, from this machine or any other.

    lazarus-actor --learner HOST:PORT [--token-file F] [--id NAME]

Everything comes from the learner: the run's config, the tokenizer and config files, the base weights
(fetched once, cached by sha256 under $LAZARUS_CACHE or ~/.cache/lazarus), then the policy's weights at
each new version. It waits with backoff while the learner is not up yet and exits 0 when the run ends;
a wrong or missing token exits 2 with one line naming the learner and the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def actor(
    learner: str = typer.Option(..., "--learner", help="HOST:PORT the learner printed (`listening on ...`)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the shared auth token."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Trusted PEM certificate of the learner."),
    actor_id: Optional[str] = typer.Option(None, "--id", help="Name shown in `lazarus status` (default: random)."),
    wait: float = typer.Option(600.0, "--wait", help="Seconds to keep retrying while the learner is unreachable."),
):
    """Join a learner and sample tasks for it until the run ends."""
    from lazarus.runtime.transports import actor_main

    sys.exit(actor_main(learner, actor_id, str(token_file) if token_file else None,
                        str(tls_cert) if tls_cert else None, wait))


def main() -> None:
    app()
