"""`lazarus-actor`: a rollout actor process that joins a learner (distributed runtime)."""

import sys


def main() -> None:
    sys.stderr.write("lazarus-actor: not yet available (the distributed runtime is not built yet)\n")
    sys.exit(2)
