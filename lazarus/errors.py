"""`LazarusError`: the one base of every error a user can fix (config, dataset, checkpoint, model, GGUF,
adapter, network peer, token). The CLI catches it once and prints one line naming the thing, exit 2.

Subclasses keep `ValueError` where they were one before, so library callers that caught that still do.
"""

from __future__ import annotations


class LazarusError(Exception):
    """A user-facing error: the message names the file, key, line, field or peer that is wrong."""
