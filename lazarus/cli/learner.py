"""`lazarus-learner`: the learner process with its gRPC server (distributed runtime)."""

import sys


def main() -> None:
    sys.stderr.write("lazarus-learner: not yet available (the distributed runtime is not built yet)\n")
    sys.exit(2)
