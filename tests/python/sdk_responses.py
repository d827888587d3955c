#!/usr/bin/env python3
"""Runs the official `openai` Python SDK's Responses API against a shardgate gateway.

Used by tests/tests/responses.rs; also runnable by hand:

    python3 tests/python/sdk_responses.py --base-url http://127.0.0.1:8080 --api-key sk-... \
        --model o-resp --text "Hello from the Responses mock." \
        --input-tokens 1000 --cached-tokens 400 --output-tokens 300 --reasoning-tokens 100

The gateway is expected to serve `--model` from an `openai-responses` upstream that always
answers `--text` with the given usage (tests/src/responses_mock.rs). Checks, in order:

1. `client.responses.create` whole: `response.output_text` and `response.usage`;
2. `client.responses.create(stream=True)`: the text deltas, and the usage of the final
   `response.completed` event;
3. `client.chat.completions.create` for the same model (translated by the gateway): the message
   and the usage in chat's shape;
4. the same streamed with `stream_options={"include_usage": True}`: the deltas and the usage
   chunk.

Prints one JSON line of results and exits 0; on the first failed check it prints
`sdk_responses: FAILED: ...` (and the traceback) to stderr and exits 1.
"""

import argparse
import json
import sys
import traceback


class CheckFailed(Exception):
    pass


def check(cond, msg):
    # Not `assert`: these checks must hold under `python3 -O` too.
    if not cond:
        raise CheckFailed(msg)


def want_usage(args):
    """(input, cached, output, reasoning, total) tokens the mock reports."""
    return (
        args.input_tokens,
        args.cached_tokens,
        args.output_tokens,
        args.reasoning_tokens,
        args.input_tokens + args.output_tokens,
    )


def check_usage(got, args, what):
    want = want_usage(args)
    check(got == want, f"{what}: usage {got}, want {want}")


def check_responses_usage(usage, args, what):
    check(usage is not None, f"{what}: no usage")
    got = (
        usage.input_tokens,
        usage.input_tokens_details.cached_tokens,
        usage.output_tokens,
        usage.output_tokens_details.reasoning_tokens,
        usage.total_tokens,
    )
    check_usage(got, args, what)


def check_chat_usage(usage, args, what):
    check(usage is not None, f"{what}: no usage")
    got = (
        usage.prompt_tokens,
        usage.prompt_tokens_details.cached_tokens,
        usage.completion_tokens,
        usage.completion_tokens_details.reasoning_tokens,
        usage.total_tokens,
    )
    check_usage(got, args, what)


def run(args):
    import openai

    client = openai.OpenAI(base_url=args.base_url + "/v1", api_key=args.api_key, max_retries=0)
    results = {}

    # 1. Whole.
    resp = client.responses.create(
        model=args.model,
        instructions="You are a terse assistant used by shardgate's SDK test.",
        input="Say something deterministic, please.",
        max_output_tokens=64,
    )
    check(resp.object == "response", f"responses.create: object {resp.object!r}")
    check(resp.status == "completed", f"responses.create: status {resp.status!r}")
    check(resp.output_text == args.text, f"responses.create: output_text {resp.output_text!r}")
    check_responses_usage(resp.usage, args, "responses.create")
    results["responses"] = resp.output_text

    # 2. Streamed.
    deltas, final, kinds = [], None, []
    stream = client.responses.create(
        model=args.model,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Say something."}]}],
        stream=True,
    )
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            final = event.response
    check(kinds and kinds[0] == "response.created", f"responses stream: events {kinds}")
    check(kinds[-1] == "response.completed", f"responses stream: events {kinds}")
    check("".join(deltas) == args.text, f"responses stream: text {''.join(deltas)!r}")
    check(final is not None and final.output_text == args.text, "responses stream: final response")
    check_responses_usage(final.usage, args, "responses stream")
    results["responses_stream_events"] = len(kinds)

    # 3. Chat completions, translated to the Responses API by the gateway.
    chat = client.chat.completions.create(
        model=args.model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say something."},
        ],
    )
    check(chat.object == "chat.completion", f"chat: object {chat.object!r}")
    check(chat.model == args.served_model, f"chat: model {chat.model!r}")
    choice = chat.choices[0]
    check(choice.message.content == args.text, f"chat: content {choice.message.content!r}")
    check(choice.finish_reason == "stop", f"chat: finish_reason {choice.finish_reason!r}")
    check_chat_usage(chat.usage, args, "chat")
    results["chat"] = choice.message.content

    # 4. Chat streamed, with the usage chunk.
    text, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model=args.model,
        messages=[{"role": "user", "content": "Say something."}],
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    check("".join(text) == args.text, f"chat stream: text {''.join(text)!r}")
    check(finish == "stop", f"chat stream: finish_reason {finish!r}")
    check_chat_usage(usage, args, "chat stream")
    results["chat_stream"] = "".join(text)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--model", default="o-resp")
    p.add_argument(
        "--served-model",
        default="gpt-5-resp",
        help="the deployment's model, which a translated answer names (as a pass-through does)",
    )
    p.add_argument("--text", required=True)
    p.add_argument("--input-tokens", type=int, required=True)
    p.add_argument("--cached-tokens", type=int, required=True)
    p.add_argument("--output-tokens", type=int, required=True)
    p.add_argument("--reasoning-tokens", type=int, required=True)
    args = p.parse_args()
    try:
        results = run(args)
    except Exception as e:  # noqa: BLE001 - any failure is reported the same way
        print(f"sdk_responses: FAILED: {e}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
