#!/usr/bin/env bash
# GRPO rewarded by a trained reward model improves held-out accuracy (issue 12).
#
#   1. `lazarus train rm --config configs/rm_math.yaml`: a Bradley-Terry reward model on the generated math
#      preference set (skipped when runs/rm_math/reward_model exists); its last line is the held-out pairwise
#      accuracy.
#   2. `lazarus demo math --config configs/grpo_rm_math.yaml`: SFT a random-init tiny model on the same kind of
#      problems, then GRPO with `rl.rewards: [{model: runs/rm_math/reward_model}]` (the reward model's score
#      only); held-out accuracy by the true `accuracy` reward before and after GRPO. Exits 1 unless GRPO adds
#      demo.min_improvement.
#
# Extra arguments go to step 2 (e.g. --set training.seed=1).
set -euo pipefail
cd "$(dirname "$0")/.."
lazarus=${LAZARUS:-.venv/bin/lazarus}
if [ ! -f runs/rm_math/reward_model/reward_model.json ]; then
    "$lazarus" train rm --config configs/rm_math.yaml
fi
"$lazarus" demo math --config configs/grpo_rm_math.yaml "$@"
