"""The Responses API through the official SDK (strict client) and the OpenAI Agents SDK: text,
structured output with `responses.parse`, a function call round trip, the SDK's stream helper,
stored responses (retrieve, input items, delete, `previous_response_id`), a fine-tuned model, an
agent with a function tool, and bad input as clear 400s and 404s."""
import asyncio
import json
from typing import Literal

import openai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel

from conftest import KEY_A, KEY_B, QA

TOOLS = [{
    "type": "function", "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True,
}]


def test_a_text_response_is_stored_and_listed(strict):
    r = strict.responses.create(model="ferrotune-tiny", input="Say hello.", instructions="Be brief.",
                                temperature=0, max_output_tokens=12, metadata={"run": "t1"})
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in {"completed", "incomplete"}
    [message] = r.output
    assert message.type == "message" and message.role == "assistant"
    assert r.output_text == message.content[0].text
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 12
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "Be brief." and r.metadata == {"run": "t1"}

    again = strict.responses.retrieve(r.id)
    assert again.output_text == r.output_text and again.usage == r.usage
    items = strict.responses.input_items.list(r.id)
    [item] = items.data
    assert item.type == "message" and item.role == "user"
    assert item.content[0].text == "Say hello."

    deleted = strict.responses.delete(r.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        strict.responses.retrieve(r.id)


def test_the_output_limit_makes_an_incomplete_response(strict):
    r = strict.responses.create(model="ferrotune-tiny", input="Count to one hundred.",
                                temperature=0, max_output_tokens=3)
    assert r.status == "incomplete", r
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_store_false_keeps_nothing(strict):
    r = strict.responses.create(model="ferrotune-tiny", input="Hi", store=False, max_output_tokens=4)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        strict.responses.retrieve(r.id)


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    confidence: Literal["low", "high"]


def test_parse_fills_a_pydantic_model(strict):
    r = strict.responses.parse(model="ferrotune-tiny", input="Is water wet?", text_format=Verdict,
                               temperature=0, max_output_tokens=60)
    assert isinstance(r.output_parsed, Verdict), r


def test_a_function_call_round_trips_through_previous_response_id(strict):
    first = strict.responses.create(
        model="ferrotune-tiny", input="What is the weather in Paris?", tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
        max_output_tokens=60)
    [call] = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    assert json.loads(call.arguments)["city"] in {"Paris", "Oslo"}

    second = strict.responses.create(
        model="ferrotune-tiny", previous_response_id=first.id, tools=TOOLS, tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}],
        temperature=0, max_output_tokens=8)
    assert second.previous_response_id == first.id
    assert [o.type for o in second.output] == ["message"]
    # The replayed conversation (question, call, result) is in the prompt: it is longer than
    # the question alone asked the same way.
    alone = strict.responses.create(
        model="ferrotune-tiny", input="What is the weather in Paris?", tools=TOOLS,
        tool_choice="none", temperature=0, max_output_tokens=1, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens + 5


def test_the_same_round_trip_without_storage_sends_the_items_back(strict):
    first = strict.responses.create(
        model="ferrotune-tiny", input="What is the weather in Oslo?", tools=TOOLS,
        tool_choice="required", parallel_tool_calls=False, temperature=0, max_output_tokens=60,
        store=False)
    call = next(o for o in first.output if o.type == "function_call")
    items = [{"role": "user", "content": "What is the weather in Oslo?"},
             {"type": "function_call", "call_id": call.call_id, "name": call.name,
              "arguments": call.arguments},
             {"type": "function_call_output", "call_id": call.call_id, "output": "-2 C"}]
    answer = strict.responses.create(model="ferrotune-tiny", input=items, tools=TOOLS,
                                     temperature=0, max_output_tokens=8, store=False)
    assert answer.status in {"completed", "incomplete"}


def test_stream_events_are_numbered_and_the_response_is_stored(strict):
    kinds, numbers, deltas, last = [], [], [], None
    with strict.responses.create(model="ferrotune-tiny", input="Tell me a story.", temperature=0,
                                 max_output_tokens=10, stream=True) as stream:
        for event in stream:
            kinds.append(event.type)
            numbers.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            last = event
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert numbers == list(range(len(numbers)))
    final = last.response
    assert final.incomplete_details.reason == "max_output_tokens"
    assert "".join(deltas) == final.output_text and final.output_text
    assert strict.responses.retrieve(final.id).output_text == final.output_text


def test_the_stream_helper_assembles_a_parsed_answer(strict):
    with strict.responses.stream(model="ferrotune-tiny", input="Is water wet?", text_format=Verdict,
                                 temperature=0, max_output_tokens=60) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(deltas) == final.output_text
    assert isinstance(final.output_parsed, Verdict), final.output_text


def test_a_streamed_call_is_assembled(strict):
    with strict.responses.stream(model="ferrotune-tiny", input="Weather in Oslo?", tools=TOOLS,
                                 tool_choice="required", parallel_tool_calls=False, temperature=0,
                                 max_output_tokens=60) as stream:
        final = stream.get_final_response()
    call = next(o for o in final.output if o.type == "function_call")
    assert call.name == "get_weather"
    assert json.loads(call.arguments)["city"] in {"Paris", "Oslo"}


def test_a_fine_tuned_model_answers_what_it_learned(strict, fine_tuned):
    question, answer = QA[0]
    r = strict.responses.create(model=fine_tuned.fine_tuned_model, input=question, temperature=0,
                                max_output_tokens=40)
    assert r.model == fine_tuned.fine_tuned_model
    assert r.output_text.strip().startswith(answer), r.output_text


def test_another_organizations_response_is_not_found(strict, server):
    mine = strict.responses.create(model="ferrotune-tiny", input="Hi", max_output_tokens=4)
    other = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY_B, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as e:
        other.responses.create(model="ferrotune-tiny", input="Go on", previous_response_id=mine.id)
    assert e.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize("kwargs, param", [
    ({"input": [{"type": "image_generation_call", "id": "x"}]}, "input[0].type"),
    ({"input": [{"type": "function_call_output", "call_id": "call_nope", "output": "1"}]},
     "input[0].call_id"),
    ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format"),
    ({"input": "hi", "truncation": "sometimes"}, "truncation"),
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "temperature": 3}, "temperature"),
    ({"input": "hi", "previous_response_id": "resp_missing"}, "previous_response_id"),
])
def test_bad_input_is_a_clear_error(client, kwargs, param):
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as e:
        client.responses.create(model="ferrotune-tiny", **kwargs)
    assert e.value.body["param"] == param, e.value.body


def test_an_input_beyond_the_context_is_a_400_unless_truncated(client):
    long_turns = [{"role": "user", "content": "word " * 300} for _ in range(8)]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="ferrotune-tiny", input=long_turns, max_output_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    r = client.responses.create(model="ferrotune-tiny", input=long_turns, max_output_tokens=4,
                                truncation="auto")
    assert r.usage.input_tokens < 2048


class Report(BaseModel):
    sky: Literal["sunny", "rainy"]


def run_agent(server, model):
    from agents import (Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool,
                        set_tracing_disabled)

    # The SDK would export traces to OpenAI's servers when a key is set: nothing leaves here.
    set_tracing_disabled(True)
    calls = []

    @function_tool
    def get_weather(city: Literal["Paris", "Oslo"]) -> str:
        """Weather in a city."""
        calls.append(city)
        return f"18 C and sunny in {city}"

    client = AsyncOpenAI(base_url=f"{server}/v1", api_key=KEY_A, max_retries=0)
    agent = Agent(
        name="weather", instructions="Answer weather questions with the tool.",
        tools=[get_weather],
        model=OpenAIResponsesModel(model=model, openai_client=client),
        # The first turn must call the tool (the SDK resets the choice afterwards); the final
        # answer is structured, so a small model's turn ends with the JSON (a finished response).
        model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                     temperature=0, max_tokens=60),
        output_type=Report,
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=4))
    return calls, result


def test_an_agents_sdk_agent_calls_its_tool_and_finishes(server):
    calls, result = run_agent(server, "ferrotune-tiny")
    assert calls and calls[0] in {"Paris", "Oslo"}
    assert isinstance(result.final_output, Report)
    kinds = [item.type for item in result.new_items]
    assert "tool_call_item" in kinds and "tool_call_output_item" in kinds
    assert kinds[-1] == "message_output_item"


def test_the_same_agent_runs_on_a_fine_tuned_model(server, fine_tuned):
    calls, result = run_agent(server, fine_tuned.fine_tuned_model)
    assert calls and isinstance(result.final_output, Report)
