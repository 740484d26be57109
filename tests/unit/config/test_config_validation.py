"""The config schema refuses, up front and naming the key, every value that would fail (or do harm) later:
non-finite numbers, alias bombs, setups that cannot learn, values that pass a type check but break a run."""

import time

import pytest

from lazarus.config import ConfigError, load_config


def refused(*overrides) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(None, list(overrides))
    return str(e.value)


@pytest.mark.parametrize("override", [
    "optim.learning_rate=.inf", "optim.learning_rate=.nan", "optim.max_grad_norm=.inf", "rl.beta=.nan",
    "optim.betas=[0.9, .inf]", "rl.rewards=[{function: accuracy, weight: .nan}]",
    "runtime.ray.actor_resources={num_cpus: .inf}", "demo.min_improvement=-.inf",
])
def test_non_finite_number_in_any_float_field_is_refused_naming_the_key(override):
    # given a config whose only fault is one non-finite number
    # when it is loaded, then it is refused, naming the dotted key
    key = override.split("=")[0]
    message = refused(override)
    assert key.split(".")[0] in message and "finite" in message


@pytest.mark.parametrize("override, key", [
    ("optim.max_grad_norm=-1", "optim.max_grad_norm"), ("optim.max_grad_norm=0", "optim.max_grad_norm"),
    ("training.seed=-1", "training.seed"), ("training.seed=99999999999999999999", "training.seed"),
    ("model.init_arch=gpt5", "model.init_arch"), ("data.max_length=1", "data.max_length"),
    ("model.quantize_group_size=7", "model.quantize_group_size"), ("eval.max_new_tokens=0", "eval.max_new_tokens"),
    ("eval.max_new_tokens=-5", "eval.max_new_tokens"),
    ("data.special_tokens_in_text=maybe", "data.special_tokens_in_text"),
    ("training.on_nonfinite=ignore", "training.on_nonfinite"),
])
def test_value_that_passes_its_type_but_fails_later_is_refused_up_front(override, key):
    assert key in refused(override)


@pytest.mark.parametrize("overrides, reason", [
    (["algorithm=grpo", "generation.num_generations=1"], "num_generations"),
    (["algorithm=grpo", "generation.num_generations=1", "rl.advantage=rloo"], "num_generations"),
    (["algorithm=grpo", "generation.num_generations=1", "rl.advantage=reinforce_pp_baseline"], "num_generations"),
    (["algorithm=grpo", "rl.rewards=[]"], "rl.rewards"),
    (["algorithm=ppo", "rl.rewards=[]"], "rl.rewards"),
    (["algorithm=grpo", "rl.rewards=[{function: accuracy, weight: 0}]"], "rl.rewards"),
])
def test_setup_that_cannot_learn_is_refused_with_the_reason(overrides, reason):
    message = refused(*overrides)
    assert reason in message and "learn" in message


def test_group_of_one_is_fine_where_no_group_baseline_is_used():
    cfg = load_config(None, ["algorithm=grpo", "generation.num_generations=1", "rl.advantage=reinforce_pp"])
    assert cfg.generation.num_generations == 1


def bomb(depth: int) -> str:
    lines = ['l0: &l0 ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, depth):
        lines.append(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(f"    {line}" for line in lines)


@pytest.mark.timeout(30)
def test_yaml_alias_bomb_is_refused_quickly_without_expanding_it(tmp_path):
    # given a ~1 KB YAML whose aliases expand to 9^9 (~400 million) nodes, inside a field typed `Any`
    path = tmp_path / "bomb.yaml"
    path.write_text("data:\n  generate_math:\n" + bomb(9) + "\n")
    assert path.stat().st_size < 1200
    # when it is loaded
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(path)
    # then it is refused, naming the file, before anything is built
    assert str(path) in str(e.value) and "aliases" in str(e.value)
    assert time.perf_counter() - t0 < 10


def test_moderate_yaml_alias_bomb_in_an_untyped_field_is_refused(tmp_path):
    # given a bomb small enough that expanding it would succeed (9^6 = 531441 nodes)
    path = tmp_path / "bomb.yaml"
    path.write_text("data:\n  generate_math:\n" + bomb(6) + "\n")
    # then it is still refused: the limit is on the expanded size, not on what happens to fit in memory
    with pytest.raises(ConfigError, match="aliases expand"):
        load_config(path)


def test_self_referencing_yaml_alias_is_refused(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("data:\n  generate_math: &x {kinds: *x}\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(path)


def test_ordinary_yaml_aliases_still_work(tmp_path):
    # given a config that reuses one value through an anchor (a legitimate use)
    path = tmp_path / "ok.yaml"
    path.write_text("optim: {learning_rate: &lr 0.001}\ndemo: {sft_learning_rate: *lr}\n")
    cfg = load_config(path)
    assert cfg.demo.sft_learning_rate == cfg.optim.learning_rate == 0.001


def test_alias_bomb_in_a_set_override_is_refused():
    value = "{kinds: [" + ", ".join(["arithmetic"] * 30) + "]}"  # data.generate_math is a typed section
    load_config(None, [f"data.generate_math={value}"])  # small and alias-free: fine
    bomb_value = "[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]," \
                 " &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]]"
    assert "aliases expand" in refused(f"data.generate_math={{kinds: {bomb_value}}}")
