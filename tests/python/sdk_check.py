#!/usr/bin/env python3
"""Runs the official `openai` and `anthropic` Python SDKs against a shardgate gateway.

Used by tests/tests/sdk_clients.rs; also runnable by hand:

    python3 tests/python/sdk_check.py --base-url http://127.0.0.1:8080 --api-key sk-...

The gateway is expected to serve, behind `shardgate-bench upstream --chunks N` (the mock):

- `--openai-model` (default "claude-test") to OpenAI clients (`POST /v1/chat/completions`),
- `--anthropic-model` (default "gpt-test") to Anthropic clients (`POST /v1/messages`),

and to answer 404 for `--missing-model`. With `--anthropic-tools`, the anthropic SDK also runs a
tool loop against a mock started with `--tools` (which calls the first tool with
{"query": "mock"} and answers a tool result with `The tool said: "<its first 40 characters>". `
before its words): messages.create and messages.stream by hand, then the SDK's tool runner. The mock's answer is deterministic: its first N words
(see WORDS below), so every answer, whole or streamed, must be exactly that text, end with
"stop" / "end_turn", and report N output tokens and a positive number of input tokens.

Prints one JSON line of results and exits 0; on the first failed check it prints
`sdk_check: FAILED: ...` (and the traceback) to stderr and exits 1.
"""

import argparse
import json
import sys
import traceback

# The mock's words, one per chunk, cycled: `WORDS` in bench/src/upstream/answer.rs.
WORDS = [
    "This", "is", "a", "mock", "answer", "from", "shardgate-bench,", "one",
    "word", "per", "chunk,", "to", "test", "gateways", "end", "to",
]

SYSTEM = "You are a terse assistant used by shardgate's SDK test."
USER = "Say something deterministic, please."
MAX_TOKENS = 64


# The tool the anthropic SDK offers with --anthropic-tools, what it returns, and what the mock
# (`shardgate-bench upstream --tools`) calls it with (`TOOL_ARGUMENTS` in answer.rs).
TOOL = {
    "name": "lookup",
    "description": "Looks a word up.",
    "input_schema": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
    },
}
TOOL_INPUT = {"query": "mock"}
TOOL_RESULT = "A mock is a stand-in that tests use instead of the real thing, here an LLM."
# The most characters of a tool result the mock quotes (`TOOL_QUOTE_CHARS_MAX`).
TOOL_QUOTE_CHARS = 40


def mock_text(chunks):
    """The text `shardgate-bench upstream --chunks CHUNKS` answers with."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(chunks))


class CheckFailed(Exception):
    pass


def check(cond, msg):
    # Not `assert`: these checks must hold under `python3 -O` too.
    if not cond:
        raise CheckFailed(msg)


def nonempty_str(v):
    return isinstance(v, str) and v != ""


class Checker:
    def __init__(self, args):
        self.args = args
        self.expected = mock_text(args.chunks)
        self.results = {"expected_text": self.expected}

    # ---- openai SDK: OpenAI chat clients ------------------------------------------------------

    def openai_client(self, key):
        import openai

        return openai.OpenAI(
            base_url=self.args.base_url.rstrip("/") + "/v1",
            api_key=key,
            max_retries=0,
            timeout=self.args.timeout,
        )

    def openai_messages(self):
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]

    def openai_usage(self, where, usage):
        check(usage is not None, f"{where}: no usage")
        check(
            isinstance(usage.prompt_tokens, int) and usage.prompt_tokens > 0,
            f"{where}: usage.prompt_tokens is {usage.prompt_tokens!r}, want > 0",
        )
        check(
            usage.completion_tokens == self.args.chunks,
            f"{where}: usage.completion_tokens is {usage.completion_tokens!r}, "
            f"want {self.args.chunks} (the mock's --chunks)",
        )
        check(
            usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
            f"{where}: usage.total_tokens is {usage.total_tokens!r}, want "
            f"{usage.prompt_tokens} + {usage.completion_tokens}",
        )
        return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}

    def openai_whole(self, client):
        where = "openai chat.completions.create"
        model = self.args.openai_model
        r = client.chat.completions.create(
            model=model, messages=self.openai_messages(), max_tokens=MAX_TOKENS
        )
        check(nonempty_str(r.id), f"{where}: id is {r.id!r}")
        check(r.object == "chat.completion", f"{where}: object is {r.object!r}")
        check(nonempty_str(r.model), f"{where}: model is {r.model!r}, want a non-empty string")
        check(len(r.choices) == 1, f"{where}: {len(r.choices)} choices, want 1")
        choice = r.choices[0]
        check(choice.index == 0, f"{where}: choices[0].index is {choice.index!r}")
        check(choice.message.role == "assistant", f"{where}: role is {choice.message.role!r}")
        text = choice.message.content
        check(nonempty_str(text), f"{where}: content is {text!r}, want non-empty text")
        check(text == self.expected, f"{where}: content is {text!r}, want {self.expected!r}")
        check(choice.finish_reason == "stop", f"{where}: finish_reason is {choice.finish_reason!r}")
        usage = self.openai_usage(where, r.usage)
        return {"model": r.model, "text": text, "finish_reason": choice.finish_reason, "usage": usage}

    def openai_stream(self, client):
        where = "openai chat.completions.create(stream=True)"
        stream = client.chat.completions.create(
            model=self.args.openai_model,
            messages=self.openai_messages(),
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        deltas, finish, usage, models, chunks = [], [], None, set(), 0
        for chunk in stream:
            chunks += 1
            check(
                chunk.object == "chat.completion.chunk",
                f"{where}: chunk {chunks} object is {chunk.object!r}",
            )
            check(usage is None, f"{where}: chunk {chunks} came after the usage chunk")
            check(nonempty_str(chunk.model), f"{where}: chunk {chunks} model is {chunk.model!r}")
            models.add(chunk.model)
            if chunk.usage is not None:
                check(
                    chunk.choices == [],
                    f"{where}: the usage chunk has choices {chunk.choices!r}, want []",
                )
                usage = chunk.usage
            for c in chunk.choices:
                check(c.index == 0, f"{where}: chunk {chunks} choice index {c.index!r}")
                if c.delta is not None and c.delta.content:
                    check(not finish, f"{where}: content after finish_reason {finish!r}")
                    deltas.append(c.delta.content)
                if c.finish_reason is not None:
                    finish.append(c.finish_reason)
        text = "".join(deltas)
        check(len(deltas) >= 2, f"{where}: {len(deltas)} content deltas, want it streamed in parts")
        check(
            text == self.expected,
            f"{where}: streamed text is {text!r} (deltas {deltas!r}), want {self.expected!r}",
        )
        check(finish == ["stop"], f"{where}: finish_reasons {finish!r}, want ['stop'] once")
        check(len(models) == 1, f"{where}: chunks name several models {sorted(models)!r}")
        usage = self.openai_usage(where + " usage chunk", usage)
        return {
            "model": models.pop(),
            "deltas": len(deltas),
            "text": text,
            "finish_reason": finish[0],
            "usage": usage,
        }

    def openai_not_found(self, client):
        import openai

        where = f"openai chat.completions.create(model={self.args.missing_model!r})"
        try:
            r = client.chat.completions.create(
                model=self.args.missing_model, messages=self.openai_messages(), max_tokens=MAX_TOKENS
            )
        except openai.NotFoundError as e:
            check(e.status_code == 404, f"{where}: status {e.status_code}, want 404")
            return {"status": e.status_code, "body": e.body}
        raise CheckFailed(f"{where}: answered {r!r}, want openai.NotFoundError (404)")

    def openai_bad_key(self):
        import openai

        where = "openai SDK with an unknown key"
        try:
            r = self.openai_client(self.args.bad_key).chat.completions.create(
                model=self.args.openai_model, messages=self.openai_messages(), max_tokens=MAX_TOKENS
            )
        except openai.AuthenticationError as e:
            check(e.status_code == 401, f"{where}: status {e.status_code}, want 401")
            return {"status": e.status_code}
        raise CheckFailed(f"{where}: answered {r!r}, want openai.AuthenticationError (401)")

    def run_openai(self):
        client = self.openai_client(self.args.api_key)
        out = {}
        out["whole"] = self.step("openai whole", lambda: self.openai_whole(client))
        out["stream"] = self.step("openai stream", lambda: self.openai_stream(client))
        check(
            out["whole"]["text"] == out["stream"]["text"],
            "openai: the whole and the streamed answers to the same prompt differ",
        )
        if not self.args.skip_not_found:
            out["not_found"] = self.step("openai 404", lambda: self.openai_not_found(client))
        if self.args.bad_key:
            out["bad_key"] = self.step("openai 401", self.openai_bad_key)
        self.results["openai"] = out

    # ---- anthropic SDK: Anthropic Messages clients --------------------------------------------

    def anthropic_client(self, key):
        import anthropic

        return anthropic.Anthropic(
            base_url=self.args.base_url.rstrip("/"),
            api_key=key,
            max_retries=0,
            timeout=self.args.timeout,
        )

    def anthropic_kwargs(self, model=None):
        return {
            "model": model or self.args.anthropic_model,
            "max_tokens": MAX_TOKENS,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": USER}],
        }

    def anthropic_usage(self, where, input_tokens, output_tokens):
        check(
            isinstance(input_tokens, int) and input_tokens > 0,
            f"{where}: usage.input_tokens is {input_tokens!r}, want > 0",
        )
        check(
            output_tokens == self.args.chunks,
            f"{where}: usage.output_tokens is {output_tokens!r}, "
            f"want {self.args.chunks} (the mock's --chunks)",
        )
        return {"input_tokens": input_tokens, "output_tokens": output_tokens}

    def anthropic_message(self, where, m):
        """Checks a whole (or accumulated) Message; returns its text."""
        check(nonempty_str(m.id), f"{where}: id is {m.id!r}")
        check(m.type == "message", f"{where}: type is {m.type!r}")
        check(m.role == "assistant", f"{where}: role is {m.role!r}")
        check(nonempty_str(m.model), f"{where}: model is {m.model!r}, want a non-empty string")
        kinds = [b.type for b in m.content]
        thinking = self.args.anthropic_thinking
        want = ["thinking", "text"] if thinking else ["text"]
        check(kinds == want, f"{where}: content blocks {kinds!r}, want {want!r}")
        if thinking:
            block = m.content[0]
            check(
                block.thinking == thinking,
                f"{where}: thinking is {block.thinking!r}, want {thinking!r}",
            )
            check(block.signature == "", f"{where}: signature is {block.signature!r}")
        text = m.content[-1].text
        check(nonempty_str(text), f"{where}: text is {text!r}, want non-empty text")
        check(text == self.expected, f"{where}: text is {text!r}, want {self.expected!r}")
        check(m.stop_reason == "end_turn", f"{where}: stop_reason is {m.stop_reason!r}")
        usage = self.anthropic_usage(where, m.usage.input_tokens, m.usage.output_tokens)
        return {"model": m.model, "text": text, "stop_reason": m.stop_reason, "usage": usage}

    def anthropic_whole(self, client):
        where = "anthropic messages.create"
        return self.anthropic_message(where, client.messages.create(**self.anthropic_kwargs()))

    def anthropic_stream_helper(self, client):
        where = "anthropic messages.stream"
        with client.messages.stream(**self.anthropic_kwargs()) as stream:
            deltas = [t for t in stream.text_stream]
            final = stream.get_final_message()
        text = "".join(deltas)
        check(len(deltas) >= 2, f"{where}: {len(deltas)} text deltas, want it streamed in parts")
        check(
            text == self.expected,
            f"{where}: streamed text is {text!r} (deltas {deltas!r}), want {self.expected!r}",
        )
        out = self.anthropic_message(where + " final message", final)
        out["deltas"] = len(deltas)
        return out

    def anthropic_stream_raw(self, client):
        where = "anthropic messages.create(stream=True)"
        events = list(client.messages.create(stream=True, **self.anthropic_kwargs()))
        kinds = [e.type for e in events if e.type != "ping"]
        # message_start, then per block content_block_start, content_block_delta+,
        # content_block_stop (a thinking block first when the upstream reasons, then the text
        # block), then message_delta, message_stop (pings anywhere).
        thinking = self.args.anthropic_thinking
        thinking_deltas = sum(
            1 for e in events if e.type == "content_block_delta" and e.delta.type == "thinking_delta"
        )
        deltas = kinds.count("content_block_delta") - thinking_deltas
        want = ["message_start"]
        if thinking:
            want += ["content_block_start"] + ["content_block_delta"] * thinking_deltas
            want += ["content_block_stop"]
        want += (
            ["content_block_start"]
            + ["content_block_delta"] * deltas
            + ["content_block_stop", "message_delta", "message_stop"]
        )
        check(deltas >= 2 and kinds == want, f"{where}: events {kinds!r}, want {want!r}")
        text_index = 1 if thinking else 0
        if thinking:
            first = next(e for e in events if e.type == "content_block_start")
            check(
                first.index == 0 and first.content_block.type == "thinking",
                f"{where}: first content_block_start is {first!r}, want index 0, thinking",
            )
            said = "".join(
                e.delta.thinking
                for e in events
                if e.type == "content_block_delta" and e.delta.type == "thinking_delta"
            )
            check(said == thinking, f"{where}: thinking {said!r}, want {thinking!r}")
        start = next(e for e in events if e.type == "message_start").message
        check(start.role == "assistant", f"{where}: message_start role is {start.role!r}")
        check(nonempty_str(start.model), f"{where}: message_start model is {start.model!r}")
        block = [e for e in events if e.type == "content_block_start"][-1]
        check(
            block.index == text_index and block.content_block.type == "text",
            f"{where}: content_block_start is {block!r}, want index {text_index}, a text block",
        )
        parts = []
        for e in events:
            if e.type == "content_block_delta" and e.delta.type != "thinking_delta":
                check(e.index == text_index, f"{where}: delta for block {e.index!r}")
                check(e.delta.type == "text_delta", f"{where}: delta type {e.delta.type!r}")
                parts.append(e.delta.text)
        text = "".join(parts)
        check(
            text == self.expected,
            f"{where}: streamed text is {text!r} (deltas {parts!r}), want {self.expected!r}",
        )
        md = next(e for e in events if e.type == "message_delta")
        check(
            md.delta.stop_reason == "end_turn",
            f"{where}: message_delta stop_reason is {md.delta.stop_reason!r}",
        )
        # Input tokens: in message_start (Anthropic's own upstreams), or in message_delta's
        # cumulative usage (a translator learns them only at the end of an OpenAI stream).
        input_tokens = start.usage.input_tokens
        if getattr(md.usage, "input_tokens", None) is not None:
            input_tokens = md.usage.input_tokens
        usage = self.anthropic_usage(where, input_tokens, md.usage.output_tokens)
        return {
            "model": start.model,
            "deltas": len(parts),
            "text": text,
            "stop_reason": md.delta.stop_reason,
            "usage": usage,
        }

    # ---- anthropic SDK: a tool loop (--anthropic-tools) -----------------------------------------

    def tool_answer(self):
        """What the mock answers a tool result with."""
        return f'The tool said: "{TOOL_RESULT[:TOOL_QUOTE_CHARS]}". ' + self.expected

    def tool_kwargs(self, messages):
        kwargs = self.anthropic_kwargs()
        kwargs["tools"] = [TOOL]
        kwargs["messages"] = messages
        return kwargs

    def check_tool_call(self, where, m):
        """Checks an answer that calls the tool; returns the tool_use block."""
        kinds = [b.type for b in m.content]
        want = (["thinking"] if self.args.anthropic_thinking else []) + ["tool_use"]
        check(kinds == want, f"{where}: content blocks {kinds!r}, want {want!r}")
        check(m.stop_reason == "tool_use", f"{where}: stop_reason is {m.stop_reason!r}")
        use = m.content[-1]
        check(nonempty_str(use.id), f"{where}: tool_use id is {use.id!r}")
        check(use.name == TOOL["name"], f"{where}: tool_use name is {use.name!r}")
        check(use.input == TOOL_INPUT, f"{where}: tool_use input is {use.input!r}, want {TOOL_INPUT!r}")
        return use

    def check_tool_answer(self, where, m):
        """Checks the answer to the tool result; returns its text."""
        kinds = [b.type for b in m.content if b.type != "thinking"]
        check(kinds == ["text"], f"{where}: content blocks {kinds!r}, want a text block")
        text = m.content[-1].text
        check(text == self.tool_answer(), f"{where}: text is {text!r}, want {self.tool_answer()!r}")
        check(m.stop_reason == "end_turn", f"{where}: stop_reason is {m.stop_reason!r}")
        return text

    def tool_result_turns(self, m, use):
        """The history after the tool call: the call, and its result (as the SDK's docs do)."""
        return [
            {"role": "user", "content": USER},
            {"role": "assistant", "content": m.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": TOOL_RESULT}],
            },
        ]

    def anthropic_tools_whole(self, client):
        where = "anthropic messages.create(tools=...)"
        first = [{"role": "user", "content": USER}]
        m = client.messages.create(**self.tool_kwargs(first))
        use = self.check_tool_call(where, m)
        m2 = client.messages.create(**self.tool_kwargs(self.tool_result_turns(m, use)))
        text = self.check_tool_answer(where + " after the tool result", m2)
        return {"tool_use_id": use.id, "input": use.input, "text": text}

    def anthropic_tools_stream(self, client):
        where = "anthropic messages.stream(tools=...)"
        first = [{"role": "user", "content": USER}]
        pieces, kinds = [], []
        with client.messages.stream(**self.tool_kwargs(first)) as stream:
            for e in stream:
                if e.type == "content_block_start":
                    kinds.append(e.content_block.type)
                if e.type == "content_block_delta" and e.delta.type == "input_json_delta":
                    pieces.append(e.delta.partial_json)
            m = stream.get_final_message()
        want = (["thinking"] if self.args.anthropic_thinking else []) + ["tool_use"]
        check(kinds == want, f"{where}: content_block_start types {kinds!r}, want {want!r}")
        check(len(pieces) >= 2, f"{where}: input_json_delta pieces {pieces!r}, want it streamed in parts")
        use = self.check_tool_call(where + " final message", m)
        with client.messages.stream(**self.tool_kwargs(self.tool_result_turns(m, use))) as stream:
            deltas = [t for t in stream.text_stream]
            m2 = stream.get_final_message()
        text = self.check_tool_answer(where + " after the tool result", m2)
        check("".join(deltas) == text, f"{where}: text deltas {deltas!r} make no {text!r}")
        return {"tool_use_id": use.id, "pieces": len(pieces), "text": text}

    def anthropic_tool_runner(self, client, stream):
        from anthropic import beta_tool

        where = f"anthropic beta.messages.tool_runner(stream={stream})"
        calls = []

        @beta_tool
        def lookup(query: str) -> str:
            """Looks a word up.

            Args:
                query: the word.
            """
            calls.append(query)
            return TOOL_RESULT

        kwargs = self.anthropic_kwargs()
        kwargs["tools"] = [lookup]
        if stream:
            kwargs["stream"] = True
        runner = client.beta.messages.tool_runner(**kwargs)
        final = runner.until_done()
        check(calls == [TOOL_INPUT["query"]], f"{where}: the tool ran with {calls!r}")
        text = self.check_tool_answer(where + " final message", final)
        return {"calls": calls, "text": text}

    def run_anthropic_tools(self, client):
        out = {}
        out["whole"] = self.step("anthropic tools whole", lambda: self.anthropic_tools_whole(client))
        out["stream"] = self.step("anthropic tools stream", lambda: self.anthropic_tools_stream(client))
        out["runner"] = self.step(
            "anthropic tool runner", lambda: self.anthropic_tool_runner(client, False)
        )
        out["runner_stream"] = self.step(
            "anthropic streaming tool runner", lambda: self.anthropic_tool_runner(client, True)
        )
        return out

    def anthropic_not_found(self, client):
        import anthropic

        where = f"anthropic messages.create(model={self.args.missing_model!r})"
        try:
            r = client.messages.create(**self.anthropic_kwargs(self.args.missing_model))
        except anthropic.NotFoundError as e:
            check(e.status_code == 404, f"{where}: status {e.status_code}, want 404")
            return {"status": e.status_code, "body": e.body}
        raise CheckFailed(f"{where}: answered {r!r}, want anthropic.NotFoundError (404)")

    def anthropic_bad_key(self):
        import anthropic

        where = "anthropic SDK with an unknown key"
        try:
            r = self.anthropic_client(self.args.bad_key).messages.create(**self.anthropic_kwargs())
        except anthropic.AuthenticationError as e:
            check(e.status_code == 401, f"{where}: status {e.status_code}, want 401")
            return {"status": e.status_code}
        raise CheckFailed(f"{where}: answered {r!r}, want anthropic.AuthenticationError (401)")

    def run_anthropic(self):
        client = self.anthropic_client(self.args.api_key)
        out = {}
        out["whole"] = self.step("anthropic whole", lambda: self.anthropic_whole(client))
        out["stream"] = self.step("anthropic stream", lambda: self.anthropic_stream_helper(client))
        out["stream_raw"] = self.step("anthropic raw stream", lambda: self.anthropic_stream_raw(client))
        for k in ("stream", "stream_raw"):
            check(
                out["whole"]["text"] == out[k]["text"],
                f"anthropic: the whole and the {k} answers to the same prompt differ",
            )
        if self.args.anthropic_tools:
            out["tools"] = self.run_anthropic_tools(client)
        if not self.args.skip_not_found:
            out["not_found"] = self.step("anthropic 404", lambda: self.anthropic_not_found(client))
        if self.args.bad_key:
            out["bad_key"] = self.step("anthropic 401", self.anthropic_bad_key)
        self.results["anthropic"] = out

    # ---- driver ---------------------------------------------------------------------------------

    def step(self, name, fn):
        try:
            return fn()
        except CheckFailed:
            raise
        except Exception as e:  # an SDK error where an answer was expected
            detail = f"{type(e).__module__}.{type(e).__name__}: {e}"
            body = getattr(e, "body", None)
            if body is not None:
                detail += f"; body: {body!r}"
            raise CheckFailed(f"{name}: {detail}") from e


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True, help="the gateway, http://HOST:PORT")
    p.add_argument("--api-key", required=True, help="the key the SDKs present")
    p.add_argument("--chunks", type=int, default=8, help="the mock upstream's --chunks (default 8)")
    p.add_argument("--openai-model", default="claude-test", help="model for the openai SDK")
    p.add_argument("--anthropic-model", default="gpt-test", help="model for the anthropic SDK")
    p.add_argument("--missing-model", default="no-such-model", help="a model the gateway lacks")
    p.add_argument(
        "--skip-not-found",
        action="store_true",
        help="skip the 404 checks (for a base URL that answers any model, e.g. the bare mock)",
    )
    p.add_argument("--bad-key", help="also check that this key gets 401 from both SDKs")
    p.add_argument(
        "--anthropic-thinking",
        help="the reasoning the chat upstream returns: the anthropic SDK must see it as a "
        "thinking block before the text (whole and streamed)",
    )
    p.add_argument(
        "--anthropic-tools",
        action="store_true",
        help="also run a tool loop with the anthropic SDK (by hand, whole and streamed, and its "
        "tool runner) against a chat upstream that is `shardgate-bench upstream --tools`",
    )
    p.add_argument("--only", choices=["both", "openai", "anthropic"], default="both")
    p.add_argument("--timeout", type=float, default=20.0, help="per-request timeout, seconds")
    args = p.parse_args(argv)
    if args.chunks < 1:
        p.error("--chunks must be at least 1")
    return args


def main(argv):
    args = parse_args(argv)
    try:
        import anthropic  # noqa: F401
        import openai  # noqa: F401
    except ImportError as e:
        print(
            f"sdk_check: FAILED: {e}; run: python3 -m pip install -r tests/python/requirements.txt",
            file=sys.stderr,
        )
        return 2
    c = Checker(args)
    c.results["versions"] = {"openai": openai.__version__, "anthropic": anthropic.__version__}
    try:
        if args.only in ("both", "openai"):
            c.run_openai()
        if args.only in ("both", "anthropic"):
            c.run_anthropic()
    except CheckFailed as e:
        traceback.print_exc(file=sys.stderr)
        print(f"sdk_check: FAILED: {e}", file=sys.stderr)
        return 1
    c.results["ok"] = True
    print(json.dumps(c.results, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
