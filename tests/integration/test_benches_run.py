"""The learner, GRPO-step and generation benchmarks run end to end (`--quick`, micro model) and print
their ratio lines."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, timeout: float = 120) -> str:
    result = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                            check=False, timeout=timeout, cwd=BENCH.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_learner_bench_prints_gflops_ratio_for_lora_and_full_rows_and_the_shared_prompt_ratio():
    # given the learner benchmark in quick mode (micro model, one timed update per row)
    # when it runs as its own process
    out = run_bench("learner.py")
    # then it prints one row per mode and a positive ratio against the matmul measured in the same run
    assert re.search(r"micro\s+lora-r8\s", out) and re.search(r"micro\s+full\s", out), out
    match = re.search(r"ratio learner GFLOP/s / matmul GFLOP/s: min ([0-9.]+), max ([0-9.]+)", out)
    assert match, out
    assert 0 < float(match.group(1)) <= float(match.group(2))
    # and the update through shared prompts against the same update on whole rows
    shared = re.search(r"LoRA update running each group's prompt once vs whole rows, micro: ([0-9.]+) vs ([0-9.]+) "
                       r"s/update, time ratio ([0-9.]+)", out)
    assert shared, out
    assert float(shared.group(1)) > 0 and float(shared.group(2)) > 0
    # and a DPO step through shared prompts against the same step on whole rows
    dpo = re.search(r"DPO LoRA step running each pair's prompt once vs whole rows, micro, 8 pairs \(\d+-token prompts, "
                    r"\d+-token completions\): ([0-9.]+) vs ([0-9.]+) s/step, time ratio ([0-9.]+)", out)
    assert dpo and all(float(x) > 0 for x in dpo.groups()), out


@pytest.mark.slow
def test_grpo_step_bench_prints_each_step_and_batched_vs_four_at_a_time_ratio():
    # given the GRPO-step benchmark in quick mode (micro model, two steps)
    # when it runs as its own process
    out = run_bench("grpo_step.py", timeout=300)
    # then every step is reported with a real (non-zero) update time, and the same-engine generation ratio
    # is positive, and the forward pass is broken down into matmuls and exp (MLX's kernel and a compiled
    # one) against NumPy's, and the same step through the CLI with async overlap is compared with the local
    # launcher
    step = re.search(r"^\s+2\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)", out, re.MULTILINE)
    assert step and float(step.group(3)) > 0, out
    assert re.search(r"micro forward \d+ ms on 32x\d+ tokens; its matmuls alone \d+ ms .* exp [0-9.]+ ns/element "
                     r"in MLX's kernel, [0-9.]+ compiled \(MLX's JIT\), vs [0-9.]+ in NumPy", out), out
    match = re.search(r"ratio batched generation / 4-at-a-time generation, same engine: micro ([0-9.]+)", out)
    assert match, out
    assert float(match.group(1)) > 0
    overlap = re.search(r"async overlap \(process launcher, max staleness 1\) vs local launcher, micro: s/step "
                        r"([0-9.]+) vs ([0-9.]+), ratio ([0-9.]+)", out)
    assert overlap and all(float(x) > 0 for x in overlap.groups()), out


@pytest.mark.slow
def test_generation_bench_prints_a_ratio_and_an_overhead_for_every_sampling_setting():
    # given the generation benchmark in quick mode (micro model, batch 1 and 4, one repeat)
    # when it runs as its own process
    out = run_bench("generation.py")
    # then every setting has a row per batch size, with a positive ratio against mlx-lm (none for stop
    # strings, which mlx-lm's generator lacks) and an overhead beyond the forward
    for setting in ("temperature", "top-k 20", "top-p 0.95", "top-k 20 top-p 0.95", "min-p 0.05", "stop strings"):
        for batch in (1, 4):
            row = re.search(rf"^{setting}\s+{batch}\s.*\s(-|[0-9.]+)\s+(-?[0-9.]+)%$", out, re.MULTILINE)
            assert row, out
            assert (row.group(1) == "-") == (setting == "stop strings"), out
    assert re.search(r"largest engine overhead beyond the model forward -?[0-9.]+% ", out), out
    match = re.search(r"min ratio ours/mlx-lm = ([0-9.]+) ", out)
    assert match and float(match.group(1)) > 0, out
    # and a LoRA policy sampled with its adapters merged, against the adapter path, in both sampling settings
    for setting in ("temperature", "top-k 20 top-p 0.95"):
        lora = re.search(rf"LoRA r8 sampling, {setting}, 4x1: adapters merged per batch vs the adapter path, "
                         r"([0-9.]+) vs ([0-9.]+) tok per wall second: ([0-9.]+)x as fast in wall time, "
                         r"([0-9.]+)x in CPU time", out)
        assert lora and all(float(x) > 0 for x in lora.groups()), out


@pytest.mark.slow
def test_runtime_bench_prints_the_gradient_sync_against_mlx_ring_ratio():
    # given the runtime benchmark's gradient-sync row in quick mode (a 0.25 MiB gradient, three rounds)
    result = subprocess.run([sys.executable, str(BENCH / "runtime.py"), "--quick", "--only", "gradient-sync"],
                            capture_output=True, text=True, check=False, timeout=300, cwd=BENCH.parent)
    # when it runs as its own process (a follower replica process and two ring processes of its own)
    assert result.returncode == 0, result.stderr[-4000:]
    # then both backends made rounds and the ratio is theirs
    match = re.search(r"gradient sync vs mx.distributed ring rounds/s \(0.25 MiB, 2 processes\): ([0-9.]+) vs "
                      r"([0-9.]+), ratio ([0-9.]+)", result.stdout)
    assert match, result.stdout
    ours, ring, ratio = map(float, match.groups())
    assert ours > 0 and ring > 0 and ratio == pytest.approx(ours / ring, abs=0.01)
