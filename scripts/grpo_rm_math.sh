#!/usr/bin/env bash
# GRPO rewarded by a trained reward model improves held-out accuracy (issue 12).
#
#   1. `lazarus train rm --config configs/rm_math.yaml`: a Bradley-Terry reward model on the generated math
#      preference set (skipped when runs/rm_math/reward_model exists); its last line is the held-out pairwise
#      accuracy.
#   2. The GRPO prompts: the math generator's files for configs/grpo_rm_math.yaml (the same problems and split
#      as the reward model's), and rl_train_comparison.jsonl, the comparison problems of rl_train.jsonl: the
#      kind of every held-out problem (the small fraction and percentage spaces are used up by the train split),
#      and the kind the reward model was measured on. Prompts and answers only; GRPO never reads the answers.
#   3. `lazarus demo math --config configs/grpo_rm_math.yaml`: SFT a random-init tiny model on the generated
#      problems, then GRPO with `rl.rewards: [{model: runs/rm_math/reward_model}]` (the reward model's score
#      only); held-out accuracy by the true `accuracy` reward before and after GRPO. Exits 1 unless GRPO adds
#      demo.min_improvement.
#
# Extra arguments go to step 3 (e.g. --set training.seed=1).
set -euo pipefail
cd "$(dirname "$0")/.."
lazarus=${LAZARUS:-.venv/bin/lazarus}
python=${PYTHON:-$(dirname "$lazarus")/python}
if [ ! -f runs/rm_math/reward_model/reward_model.json ]; then
    "$lazarus" train rm --config configs/rm_math.yaml
fi
if [ ! -f runs/grpo_rm_math/data/rl_train_comparison.jsonl ]; then
    "$python" - <<'PY'
import json
from pathlib import Path

from lazarus.config import load_config
from lazarus.data.io import write_jsonl
from lazarus.runtime.build import ensure_data

cfg = load_config("configs/grpo_rm_math.yaml", ["data.train=runs/grpo_rm_math/data/rl_train.jsonl"])
ensure_data(cfg)  # the generator's files, as the demo would write them
data = Path(cfg.data.train).parent
rows = [json.loads(line) for line in (data / "rl_train.jsonl").read_text().splitlines()]
held_out = {json.loads(line)["kind"] for line in (data / "rl_eval.jsonl").read_text().splitlines()}
if held_out != {"comparison"}:
    raise SystemExit(f"held-out kinds are {sorted(held_out)}, not comparison alone: revisit the prompt filter")
kept = [row for row in rows if row["kind"] == "comparison"]
write_jsonl(data / "rl_train_comparison.jsonl", kept)
print(f"GRPO prompts: {len(kept)} comparison problems of {len(rows)} in {data / 'rl_train.jsonl'}")
PY
fi
"$lazarus" demo math --config configs/grpo_rm_math.yaml "$@"
