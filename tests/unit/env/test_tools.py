"""Tools: the schema `@tool` derives, argument validation, the calculator, and every malformed-call case
the tool env turns into an observation plus a counted failure."""

import pytest

from lazarus.env.tool_env import ToolEnv, parse_tool_calls
from lazarus.env.tools.calculator import calculator
from lazarus.env.tools.registry import ToolError, Toolbox, tool


def test_tool_decorator_derives_schema_from_type_hints_and_docstring():
    # given a typed function
    @tool
    def lookup(city: str, limit: int = 3, exact: bool = False) -> str:
        """Find a city.

        Longer text that is not the description."""
        return city

    # then its schema names each parameter's JSON type; parameters without a default are required
    assert lookup.name == "lookup" and lookup.description == "Find a city."
    assert lookup.parameters["properties"] == {"city": {"type": "string"}, "limit": {"type": "integer", "default": 3},
                                               "exact": {"type": "boolean", "default": False}}
    assert lookup.parameters["required"] == ["city"]
    assert lookup.schema()["function"]["name"] == "lookup"


@pytest.mark.parametrize("expression,expected", [("347 * 29", "10063"), ("(12 + 5) / 4", "4.25"),
                                                 ("2 ** 10 - 1", "1023"), ("-7 // 2", "-4"), ("123456 × 2", "246912")])
def test_calculator_computes_exactly(expression, expected):
    assert Toolbox([calculator]).call("calculator", {"expression": expression}) == expected


@pytest.mark.parametrize("expression", ["__import__('os').system('true')", "9 ** 9 ** 9", "1 / 0", "x + 1",
                                        "open('/etc/passwd')", "1" * 300])
def test_calculator_refuses_what_is_not_bounded_arithmetic(expression):
    with pytest.raises(ToolError) as e:
        Toolbox([calculator]).call("calculator", {"expression": expression})
    assert e.value.kind == "tool_error"


@pytest.mark.parametrize("arguments", [{}, {"expression": 3}, {"expression": "1", "extra": 1}, ["1 + 1"]])
def test_toolbox_rejects_arguments_that_do_not_fit_the_schema(arguments):
    with pytest.raises(ToolError) as e:
        Toolbox([calculator]).call("calculator", arguments)
    assert e.value.kind == "bad_arguments"


def call(body: str) -> str:
    return f"<tool_call>{body}</tool_call>"


@pytest.mark.parametrize("action,kind", [
    (call('{"name": "calculator", "arguments": {"expression": "2+"'), "malformed"),        # bad JSON
    ("<tool_call>{\"name\": \"calculator\", \"arguments\": {}}", "malformed"),             # never closed
    (call('{"arguments": {"expression": "1"}}'), "malformed"),                             # no name
    (call('["calculator"]'), "malformed"),                                                 # not an object
    (call('{"name": "weather", "arguments": {"city": "Rome"}}'), "unknown_tool"),
    (call('{"name": "calculator", "arguments": {"expr": "1+1"}}'), "bad_arguments"),
    (call('{"name": "calculator", "arguments": "not json"}'), "bad_arguments"),
    (call('{"name": "calculator", "arguments": {"expression": "1/0"}}'), "tool_error"),
])
def test_every_bad_call_becomes_an_error_observation_and_a_counted_failure(action, kind):
    # given a tool env with the calculator
    env = ToolEnv(Toolbox([calculator]))
    env.reset({"prompt": "What is 2 + 2?"})
    # when the model's turn holds a bad call
    result = env.step("Let me compute. " + action)
    # then the episode goes on, the model reads an error, and the failure is counted by kind
    assert not result.done
    assert result.info["failures"] == {kind: 1}
    (message,) = result.observation.messages
    assert message["role"] == "tool" and message["content"].startswith("error: ")


def test_a_good_call_returns_the_result_as_a_tool_message_and_an_answer_ends_the_episode():
    env = ToolEnv(Toolbox([calculator]))
    opening = env.reset({"prompt": "What is 347 * 29?"})
    assert opening.tools[0]["function"]["name"] == "calculator"
    result = env.step(call('{"name": "calculator", "arguments": {"expression": "347 * 29"}}'))
    assert result.observation.messages == [{"role": "tool", "name": "calculator", "content": "10063"}]
    assert result.info == {"tool_calls": 1, "failures": {}}
    final = env.step("Answer: 10063")
    assert final.done and final.observation.messages == []


def test_parse_finds_several_calls_in_order():
    text = call('{"name": "a", "arguments": {}}') + " and " + call('{"name": "b", "arguments": {"x": 1}}')
    assert [(c.name, c.arguments) for c in parse_tool_calls(text)] == [("a", {}), ("b", {"x": 1})]


def test_reward_functions_are_the_trivial_one_step_env():
    from lazarus.env.protocol import RewardEnv
    from lazarus.env.rewards import RewardFunction, accuracy_reward, format_reward

    env = RewardEnv([RewardFunction("accuracy", accuracy_reward), RewardFunction("format", format_reward, 0.5)])
    env.reset({"prompt": "What is 2 * 3?", "answer": "6"})
    right = env.step("2 * 3 = 6\nAnswer: 6")
    env.reset({"prompt": "What is 2 * 4?", "answer": "8"})
    wrong = env.step("Answer: 9")
    assert right.done and right.reward == 1.5 and right.info["reward_components"] == {"accuracy": 1.0, "format": 1.0}
    assert wrong.done and wrong.reward == 0.5
