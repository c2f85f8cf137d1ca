"""Tools, structured outputs and legacy completions through the official SDK (strict client):
forced calls parse and validate, the SDK's stream helper assembles streamed calls, a tool result
round-trips, `parse` fills a pydantic model, and bad tool input raises BadRequestError."""
import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                       "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
                       "required": ["zone"], "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def call_of(strict, **kw):
    r = strict.chat.completions.create(model="ferrotune-tiny", messages=ASK, tools=TOOLS,
                                       temperature=0, max_tokens=60, **kw)
    assert r.choices[0].finish_reason == "tool_calls", r
    return r


def test_a_named_tool_choice_gives_a_call_to_that_function(strict):
    r = call_of(strict, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in {"Paris", "Oslo"}
    assert r.choices[0].message.content is None


def test_required_gives_a_valid_call_to_one_of_the_tools(strict):
    # One call: with parallel calls allowed, a random-weight model may not close the list.
    r = call_of(strict, tool_choice="required", parallel_tool_calls=False)
    [call] = r.choices[0].message.tool_calls
    assert call.function.name in {"get_weather", "get_time"}
    assert set(json.loads(call.function.arguments)) in ({"city"}, {"zone"})


def test_the_stream_helper_assembles_a_streamed_call(strict):
    with strict.chat.completions.stream(
        model="ferrotune-tiny", messages=ASK, tools=TOOLS, temperature=0, max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    ) as stream:
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments)["zone"] in {"utc", "cet"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_a_tool_result_round_trips(strict):
    first = call_of(strict, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    message = first.choices[0].message
    call = message.tool_calls[0]
    messages = ASK + [message, {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}]
    answer = strict.chat.completions.create(model="ferrotune-tiny", messages=messages, tools=TOOLS,
                                            tool_choice="none", temperature=0, max_tokens=8)
    assert answer.choices[0].message.tool_calls is None
    assert isinstance(answer.choices[0].message.content, str)


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    confidence: Literal["low", "high"]


def test_parse_fills_a_pydantic_model(strict):
    r = strict.chat.completions.parse(model="ferrotune-tiny", messages=ASK, response_format=Verdict,
                                      temperature=0, max_tokens=60)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Verdict), r
    assert parsed.answer in {"yes", "no"}


@pytest.mark.parametrize("tools, choice, messages", [
    ([{"type": "function", "function": {"description": "no name"}}], None, ASK),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None, ASK),
    (TOOLS, {"type": "function", "function": {"name": "get_stock"}}, ASK),
    (TOOLS, None, ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "1"}]),
])
def test_bad_tool_input_is_a_bad_request(strict, tools, choice, messages):
    extra = {"tool_choice": choice} if choice else {}
    with pytest.raises(openai.BadRequestError) as e:
        strict.chat.completions.create(model="ferrotune-tiny", messages=messages, tools=tools, **extra)
    assert e.value.body["param"]


def test_legacy_completions_plain_streamed_and_refused(strict, client):
    r = strict.completions.create(model="ferrotune-tiny", prompt=["Water", "Sleep"], n=2,
                                  max_tokens=3, temperature=0, logprobs=1)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.completion_tokens == 12
    assert len(r.choices[0].logprobs.tokens) == 3
    # Greedy text is compared between requests that run alone: a batch of four sequences rounds
    # differently, and the random-weight model's logits are close enough to flip an argmax.
    plain = strict.completions.create(model="ferrotune-tiny", prompt="Water", max_tokens=3,
                                      temperature=0).choices[0].text
    echoed = strict.completions.create(model="ferrotune-tiny", prompt="Water", max_tokens=3,
                                       temperature=0, echo=True)
    assert echoed.choices[0].text == "Water" + plain
    # The SDK's Completion type has no null finish_reason, which every streamed chunk but the
    # last carries (OpenAI's too): the stream is read with the default client.
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="ferrotune-tiny", prompt="Water", max_tokens=3, temperature=0, stream=True) if c.choices)
    assert text == plain
    with pytest.raises(openai.BadRequestError):
        strict.completions.create(model="ferrotune-tiny", prompt="Water", suffix="end")
