#!/usr/bin/env python3
"""A tool loop through the gateway with the official SDKs, whole and streamed, whatever the
upstream behind it (tests/tests/sdk_providers.rs runs it in front of strict Gemini, Bedrock and
Responses mocks).

The loop: the user asks; the model calls a tool (any of those offered, arguments a JSON object);
the tool's result goes back under the call's id; the model answers with text that quotes the
result. With the openai SDK (chat completions, `stream=True` with `include_usage`) and with
the anthropic SDK (`messages.create`, `messages.stream`). Prints one line per step; exits 1 at
the first check that fails, saying what it got.
"""

import argparse
import json
import sys

RESULT = "18C and sunny"
WEATHER = {
    "name": "get_weather",
    "description": "The weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
QUESTION = "What is the weather in Paris?"


def check(cond, msg):
    if not cond:
        print(f"FAIL: {msg}", flush=True)
        sys.exit(1)


def openai_tools():
    return [{"type": "function", "function": WEATHER}]


def anthropic_tools():
    return [
        {
            "name": WEATHER["name"],
            "description": WEATHER["description"],
            "input_schema": WEATHER["parameters"],
        }
    ]


def openai_whole(client, model):
    messages = [{"role": "user", "content": QUESTION}]
    r = client.chat.completions.create(model=model, messages=messages, tools=openai_tools())
    choice = r.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason!r}")
    calls = choice.message.tool_calls or []
    check(len(calls) >= 1, f"no tool call: {choice.message}")
    call = calls[0]
    check(call.function.name == "get_weather", f"called {call.function.name!r}")
    args = json.loads(call.function.arguments or "{}")
    check(isinstance(args, dict), f"arguments {call.function.arguments!r}")
    check(r.usage is not None and r.usage.total_tokens > 0, f"usage {r.usage}")
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": RESULT})
    r = client.chat.completions.create(model=model, messages=messages, tools=openai_tools())
    text = r.choices[0].message.content or ""
    check(RESULT in text, f"the answer does not quote the tool's result: {text!r}")
    print(f"openai whole: called {call.function.name}({args}), then {text!r}", flush=True)


def openai_stream_once(client, model, messages):
    """One streamed call: (text, tool calls by index as dicts, finish_reason, usage)."""
    text, calls, finish, usage = "", {}, None, None
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        tools=openai_tools(),
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            d = choice.delta
            text += d.content or ""
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    check(c["id"] is None, f"a second id for call {tc.index}")
                    c["id"] = tc.id
                if tc.function and tc.function.name:
                    c["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    c["arguments"] += tc.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    return text, calls, finish, usage


def openai_stream(client, model):
    messages = [{"role": "user", "content": QUESTION}]
    _, calls, finish, usage = openai_stream_once(client, model, messages)
    check(finish == "tool_calls", f"streamed finish_reason {finish!r}")
    check(0 in calls, f"no streamed tool call: {calls}")
    call = calls[0]
    check(call["id"] and call["name"] == "get_weather", f"streamed call {call}")
    args = json.loads(call["arguments"] or "{}")
    check(isinstance(args, dict), f"streamed arguments {call['arguments']!r}")
    check(usage is not None and usage.total_tokens > 0, f"streamed usage {usage}")
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": RESULT})
    text, _, finish, _ = openai_stream_once(client, model, messages)
    check(RESULT in text, f"the streamed answer does not quote the tool's result: {text!r}")
    check(finish == "stop", f"streamed final finish_reason {finish!r}")
    print(f"openai stream: called {call['name']}({args}), then {text!r}", flush=True)


def anthropic_loop(client, model, streamed):
    messages = [{"role": "user", "content": QUESTION}]

    def ask():
        kwargs = dict(model=model, max_tokens=256, tools=anthropic_tools(), messages=messages)
        if streamed:
            with client.messages.stream(**kwargs) as s:
                return s.get_final_message()
        return client.messages.create(**kwargs)

    m = ask()
    check(m.stop_reason == "tool_use", f"stop_reason {m.stop_reason!r}: {m}")
    uses = [b for b in m.content if b.type == "tool_use"]
    check(len(uses) >= 1, f"no tool_use block: {m.content}")
    use = uses[0]
    check(use.name == "get_weather" and isinstance(use.input, dict), f"tool_use {use}")
    check(m.usage.input_tokens > 0 and m.usage.output_tokens > 0, f"usage {m.usage}")
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]})
    messages.append(
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": RESULT}],
        }
    )
    m = ask()
    text = "".join(b.text for b in m.content if b.type == "text")
    check(RESULT in text, f"the answer does not quote the tool's result: {text!r}")
    check(m.stop_reason == "end_turn", f"final stop_reason {m.stop_reason!r}")
    how = "stream" if streamed else "whole"
    print(f"anthropic {how}: called {use.name}({use.input}), then {text!r}", flush=True)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", required=True, help="the gateway, http://host:port")
    p.add_argument("--api-key", default="sk-none")
    p.add_argument("--model", required=True, help="the model group both SDKs call")
    p.add_argument("--skip-anthropic", action="store_true")
    a = p.parse_args(argv)

    import openai

    oc = openai.OpenAI(base_url=a.base_url + "/v1", api_key=a.api_key, max_retries=0)
    openai_whole(oc, a.model)
    openai_stream(oc, a.model)
    if not a.skip_anthropic:
        import anthropic

        ac = anthropic.Anthropic(base_url=a.base_url, api_key=a.api_key, max_retries=0)
        anthropic_loop(ac, a.model, streamed=False)
        anthropic_loop(ac, a.model, streamed=True)
    print("OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
