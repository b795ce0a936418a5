"""Turn Responses API items into the chat messages NeMo RL trains on.

The context is the request (instructions, input turns); the output is what the model produced
(`response.output`), with the environment's turns in between for multi-turn rollouts. A single
assistant turn becomes its text; anything longer stays a message list (assistant `tool_calls`,
`tool` results, environment user turns), which `cut` turns into a pair: NeMo RL trains only the
final message of a completion, so a pair's completions are the one assistant message where two
trajectories part.

Tool-call arguments become JSON objects, as Hugging Face chat templates expect them (`tojson`
on a string would encode it twice); arguments that are not a JSON object stay as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import jsonschema_rs
import orjson

from recipe.prepare.rollouts import Content, Item, schema

TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", None}
ROLES = {"system", "developer", "user", "assistant"}


class Unusable(Exception):
    """A valid rollout that cannot become training data; carries the reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ChatOptions:
    developer_role: str = "system"  # what a `developer` turn becomes
    include_reasoning: bool = False  # prepend reasoning summaries as <think>...</think>


@lru_cache(maxsize=1)
def _text_rule():
    return jsonschema_rs.validator_for(schema("pair")["$defs"]["text"]).is_valid


def has_text(text: str) -> bool:
    """Whether `text` holds more than whitespace, by the pair schema's own rule (its validator's
    `\\S`, ECMA-262 whitespace: U+FEFF is space there, U+001C is not), so that what prepare
    calls text is exactly what the schema accepts. (A letter or digit at either end is text by
    any rule: the common case needs no call.)"""
    return bool(text) and (text[0].isalnum() or text[-1].isalnum() or _text_rule()(text))


def text_of(content: Content, where: str, role: str = "") -> str:
    """The text of a content (a string or text parts); `where` and `role` name it in the error."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type not in TEXT_PARTS:
            what = f"{where} {role} message" if role else where
            raise Unusable("non_text_content", f"{what} holds a {part.type!r} part; only text is supported")
        texts.append(part.text or "")
    return texts[0] if len(texts) == 1 else "".join(texts)


def _kind(item: Item) -> str | None:
    return item.type or ("message" if item.role else None)  # message items may lack `type`


def _role(item: Item, where: str) -> str:
    role = item.role or "user"
    if role not in ROLES:
        raise Unusable("unknown_role", f"{where} has a message with role {role!r}")
    return role


def _check_call(item: Item, where: str) -> None:
    if not item.name:  # a tool call must name its tool (the pair schema, NeMo RL's chat template)
        raise Unusable("tool_call_without_name", f"{where} has a function_call without a name")


def arguments_of(text: str | None):
    """A tool call's arguments as a JSON object, or the text as written when it is not one."""
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def to_messages(items: list[Item], options: ChatOptions, where: str) -> list[dict]:
    """Items in order as chat messages: tool calls attach to the assistant turn they belong to.

    An assistant message without text (by `has_text`) and without tool calls carries nothing
    to train on or condition on, and is left out.
    """
    messages: list[dict] = []
    pending_reasoning: list[str] = []
    for item in items:
        kind = _kind(item)
        if kind == "message":
            role = _role(item, where)
            if role == "developer":
                role = options.developer_role
            text = text_of(item.content, where, role)
            if role == "assistant":
                if not has_text(text):
                    continue
                if pending_reasoning:
                    text = "<think>\n" + "\n".join(pending_reasoning) + "\n</think>\n" + text
                    pending_reasoning = []
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                    last["content"] += "\n" + text  # several message items of one assistant turn
                    continue
            messages.append({"role": role, "content": text})
        elif kind == "function_call":
            _check_call(item, where)
            call = {"id": item.call_id or "", "type": "function",
                    "function": {"name": item.name or "", "arguments": arguments_of(item.arguments)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls of one turn
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.call_id or "",
                             "content": text_of(item.output, where, "function_call_output")})
        elif kind == "reasoning":
            if options.include_reasoning:
                pending_reasoning.extend(p.text for p in item.summary or () if p.text)
        # other item kinds (web_search_call, ...) carry nothing a chat template can show
    return messages


def check_context(params_input, instructions: str | None) -> None:
    """Raise `Unusable` unless the request holds a context NeMo RL can train on.

    The scan runs the checks on every row; `context_of` builds the messages only for the rows
    that end up in a pair.
    """
    turns = 1 if isinstance(params_input, str) and params_input else 0
    if isinstance(params_input, list):
        for item in params_input:
            kind = _kind(item)
            if kind == "message":
                text_of(item.content, "input", _role(item, "input"))
            elif kind == "function_call_output":
                text_of(item.output, "input function_call_output")
            elif kind == "function_call":
                _check_call(item, "input")
            turns += kind in ("message", "function_call", "function_call_output")
    if not (instructions or turns):
        raise Unusable("empty_context", "the request has no input turns: the prompt was built "
                       "outside the row (agent harness); nothing to condition the pair on")


def context_of(params_input, instructions: str | None, options: ChatOptions) -> list[dict]:
    """The context as chat messages, for a request `check_context` accepted."""
    context: list[dict] = []
    if instructions:
        context.append({"role": "system", "content": instructions})
    if isinstance(params_input, str):
        if params_input:
            context.append({"role": "user", "content": params_input})
    elif params_input:
        context.extend(to_messages(params_input, ChatOptions(options.developer_role), "input"))
    return context


def _is_text_turn(item) -> bool:
    return item.type == "reasoning" or (item.role == "assistant" and item.type in ("message", None))


def output_of(output: list[Item] | None, options: ChatOptions) -> str | list[dict]:
    """What the model produced: the text of a single assistant turn, or every message of a
    longer output (environment turns after the model's last one included: `cut` decides what
    a pair can learn from them)."""
    output = output or []
    if output and not options.include_reasoning:  # the commonest case: reasoning, then one answer
        last = output[-1]
        if last.role == "assistant" and last.type in ("message", None) and all(
                item.type == "reasoning" for item in output[:-1]):
            text = text_of(last.content, "output assistant message")
            if has_text(text):
                return text
    if not options.include_reasoning and all(map(_is_text_turn, output)):
        # the common case, without building messages: one assistant turn (plus reasoning)
        texts = [text_of(item.content, "output assistant message") for item in output
                 if item.type != "reasoning"]
        if not texts:
            raise Unusable("no_assistant_output", "response.output holds no assistant turn")
        text = "\n".join(t for t in texts if has_text(t))
        if not text:
            raise Unusable("empty_response", "the assistant turn has no text")
        return text
    messages = to_messages(output, options, "output")
    if not any(m["role"] == "assistant" for m in messages):
        said = any(_kind(i) == "message" and i.role == "assistant" for i in output)
        raise Unusable(*(("empty_response", "no assistant turn has text or a tool call") if said else
                         ("no_assistant_output", "response.output holds no assistant turn")))
    if len(messages) == 1 and "tool_calls" not in messages[0]:
        return messages[0]["content"]
    return messages


def response_length(response: str | list[dict], measure=len) -> int:
    """What the model wrote (assistant turns only), in characters or in `measure`'s unit (tokens):
    the length a length penalty and the length bias see."""
    if isinstance(response, str):
        return measure(response)
    total = 0
    for message in response:
        if message["role"] == "assistant":
            total += measure(message["content"]) if message["content"] else 0
            for call in message.get("tool_calls", ()):
                arguments = call["function"]["arguments"]
                total += measure(arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode())
    return total
