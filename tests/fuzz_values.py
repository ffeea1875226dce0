"""Generated hostile values for the gateway's fuzz tests: JSON that json.dumps will not write (deep nesting, huge
numbers, NaN), lone surrogates, values of any type nested anywhere, `x-route-*` / deadline headers, broken body
bytes, a log handler that keeps every record, and the in-process gateway the fuzz tests post to (with the checks
after each request). Strategies and helpers only: no tests here."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import strategies as st

from engine.runtime.reserved import RESERVED_ATTRS
from providers.gateway.openai_wire import DEADLINE_HEADER

__all__ = [
    "CHEAP",
    "Raw",
    "Records",
    "assert_no_error_logged",
    "assert_nothing_in_flight",
    "deep",
    "dump",
    "fuzz_policy",
    "fuzz_target",
    "headers",
    "hows",
    "huge",
    "keys",
    "mangle",
    "media_parts",
    "surrogates",
    "values",
]


# ---- a JSON writer that can write what json.dumps will not: raw text (deep nesting, huge numbers) ----------------
class Raw:
    """Text put into the body as it is: `"[" * 5000 + "]" * 5000`, `1e999`, `NaN`, a 5000-digit number."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:30]!r}{'...' if len(self.text) > 30 else ''})"


def dump(value: Any) -> str:
    """`value` as JSON text; floats NaN/inf as `NaN`/`Infinity` (Python's json reads them), lone surrogates as
    `\\ud800` escapes, Raw as its text."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dump(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)  # ensure_ascii: a lone surrogate is written as its escape


# ---- strategies ---------------------------------------------------------------------------------------------------
surrogates = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\ud83d", "x\ude00"])
texts = st.one_of(st.text(max_size=12), surrogates)
deep = st.one_of(
    st.builds(lambda n: Raw("[" * n + "]" * n), st.sampled_from([40, 63, 64, 65, 100, 900, 3000, 100_000])),
    st.builds(lambda n: Raw('{"a":' * n + "1" + "}" * n), st.sampled_from([40, 63, 64, 65, 100, 900, 3000])),
)
huge = st.sampled_from(
    [Raw("1e999"), Raw("-1e999"), Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("9" * 5000), Raw("1e-999")]
)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.just(10**4000),
    st.floats(allow_nan=True, allow_infinity=True),
    huge,
)
keys = st.one_of(st.text(max_size=10), surrogates, st.sampled_from([*RESERVED_ATTRS, "budget.left", "spend.today"]))
leaves = st.one_of(st.none(), st.booleans(), numbers, texts, deep)
values = st.recursive(
    leaves, lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(keys, kids, max_size=3)), max_leaves=8
)
# input_audio and file content parts: well-formed ones, and every field of them broken in turn (or any value)
_b64 = st.sampled_from(["UklGRgAAAABXQVZF", "JVBERi0xLjcK", "", "no base64!", "QQ", "QQ==\nQQ==", "\ud800"])
_audio = st.fixed_dictionaries(
    {"data": st.one_of(_b64, values)},
    optional={"format": st.one_of(st.sampled_from(["wav", "mp3", "ogg", "WAV", ""]), values)},
)
_file = st.fixed_dictionaries(
    {},
    optional={
        "file_data": st.one_of(
            _b64,
            st.sampled_from(["data:application/pdf;base64,JVBERi0xLjcK", "data:application/pdf,x", "data:;base64,"]),
            st.sampled_from(["data:image/png;base64,iVBORw0K", "data:application/pdf;base64,", "data:"]),
            values,
        ),
        "file_id": st.one_of(st.sampled_from(["file-abc", ""]), values),
        "filename": st.one_of(st.sampled_from(["a.pdf", ""]), values),
    },
)
media_parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_audio"), "input_audio": st.one_of(_audio, values)}),
    st.fixed_dictionaries({"type": st.just("file"), "file": st.one_of(_file, values)}),
    st.fixed_dictionaries({"type": st.sampled_from(["input_audio", "file"])}),
)
header_values = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    st.sampled_from(["NaN", "1e999", '"\\ud800"', "[" * 3000 + "]" * 3000, "[" * 65 + "]" * 65, '{"a": 1}', "3"]),
)
headers = st.dictionaries(
    st.one_of(
        st.sampled_from(["x-route-tier", "x-route-seats", "x-route-max-tokens", "x-route-budget", "x-route-"]),
        st.text("abcdefghijklmnopqrstuvwxyz-._", min_size=1, max_size=8).map(lambda s: "x-route-" + s),
        st.just(DEADLINE_HEADER),
    ),
    header_values,
    max_size=2,
)

#: `how` for mangle: mostly 0 (the body intact), else one of its three ways of breaking it
hows = st.sampled_from([0, 0, 0, 0, 1, 2, 3])


def mangle(text: str, how: int, at: int) -> bytes:
    """The body's bytes, sometimes broken: cut short, an invalid UTF-8 byte, a UTF-8-encoded surrogate."""
    raw = text.encode()
    at = at % (len(raw) + 1)
    if how == 1:
        return raw[:at]
    if how == 2:
        return raw[:at] + b"\xff" + raw[at:]
    if how == 3:
        return raw[:at] + b"\xed\xa0\x80" + raw[at:]
    return raw


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def fuzz_policy(rule: str) -> str:
    """The main policy of the fuzz targets' gateways, with `rule` (the test's own reason for beta-coder) third."""
    return f"""
set retry.attempts = 1
set overrides = true
budget daily $1000 per user
when tier == "pro" use alpha-large
{rule}
when tools prefer cheapest
otherwise use alpha-mini fallback beta-chat, gamma-flash
"""


#: the second policy of the fuzz targets' gateways, served as model "cheap"
CHEAP = """
set retry.attempts = 1
otherwise use gamma-flash fallback beta-chat
"""


@contextmanager
def fuzz_target(policy: str) -> Iterator[tuple[Any, Any, Records]]:
    """(a TestClient, the Gateway, the log Records) of an in-process gateway over `policy` (and CHEAP as model
    "cheap") whose upstream is a healthy loopback FakeServer."""
    from starlette.testclient import TestClient

    from providers.gateway.app import Gateway
    from tests.engines import engine_for
    from tests.fakeserver import FakeServer, Reply

    with FakeServer() as server:
        server.default = Reply(text="ok", input_tokens=12, output_tokens=6)
        gw = Gateway(engine_for(server, policy), policies={"cheap": engine_for(server, CHEAP)})
        records = Records()
        logger = logging.getLogger("modelroute")
        logger.addHandler(records)
        try:
            with TestClient(gw.asgi()) as client:
                yield client, gw, records
        finally:
            logger.removeHandler(records)


def assert_no_error_logged(records: Records) -> None:
    """No ERROR record and no traceback was logged."""
    problems = [rec for rec in records.records if rec.levelno >= logging.ERROR or rec.exc_info]
    assert not problems, [rec.getMessage() for rec in problems]


def assert_nothing_in_flight(gw: Any) -> None:
    """The gateway has no request open and no engine counts a call in flight."""
    assert gw.active == 0
    for engine in gw.engines():
        assert {m: engine.state.in_flight(m) for m in engine.policy.models if engine.state.in_flight(m)} == {}
