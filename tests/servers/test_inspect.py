"""`tokenergy inspect`: files, stdin and URLs; table and JSON; one-line errors."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.servers.inspect import inspect_command

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def _run(
    source: str, engine: str = "auto", as_json: bool = False, stdin: bytes = b""
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = inspect_command(source, engine, as_json, io.BytesIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


def test_json_of_a_file_carries_what_the_table_shows() -> None:
    code, out, err = _run(str(FIXTURES / "vllm_v1.prom"), as_json=True)
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["engine"] == "vllm"
    assert document["start_time_seconds"] == 1767225600
    assert document["token_counters"] is True
    assert document["warnings"] == []
    model = document["models"][LLAMA]
    assert model == {
        "input_tokens": 1234567,
        "output_tokens": 456789,
        "cached_input_tokens": 200000,
        "requests_running": 7,
        "requests_waiting": 3,
        "kv_cache_usage_ratio": 0.42,
        "prefill_seconds": model["prefill_seconds"],
        "decode_seconds": model["decode_seconds"],
    }
    assert model["prefill_seconds"] > 0 and model["decode_seconds"] > 0


def test_json_without_model_label_and_unexposed_fields() -> None:
    code, out, _ = _run(str(FIXTURES / "llamacpp.prom"), as_json=True)
    assert code == 0
    document = json.loads(out)
    assert document["start_time_seconds"] is None  # a file has no start-time header
    assert document["models"] == {
        "": {
            "input_tokens": 1843390,
            "output_tokens": 290363,
            "cached_input_tokens": None,
            "requests_running": 1,
            "requests_waiting": 0,
            "kv_cache_usage_ratio": None,
            "prefill_seconds": 737.358,
            "decode_seconds": 6452.51,
        }
    }


def test_json_carries_the_parser_warnings() -> None:
    code, out, _ = _run(str(FIXTURES / "vllm_duplicates.prom"), as_json=True)
    assert code == 0
    assert json.loads(out)["warnings"] == ["2 duplicate series dropped (the first one is kept)"]


def test_table_of_stdin() -> None:
    body = (FIXTURES / "dynamo.prom").read_bytes()
    code, out, err = _run("-", stdin=body)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "engine: dynamo"
    assert lines[1].split()[:3] == ["model", "input", "tokens"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows[LLAMA][:3] == ["1,234,567", "456,789", "200,000"]
    assert rows["Qwen/Qwen2.5-7B-Instruct"][-1] == "-"  # no KV gauge on the Dynamo frontend


def test_table_shows_missing_model_label_start_time_and_warnings() -> None:
    code, out, _ = _run(str(FIXTURES / "vllm_nan_negative.prom"))
    assert code == 0
    assert "warning: input tokens of model 'bad'" in out
    code, out, _ = _run(str(FIXTURES / "tgi.prom"))
    assert "(no model label)" in out
    code, out, _ = _run(str(FIXTURES / "nim.prom"))
    assert "server start: 2026-01-01T00:00:00Z (1767225600 Unix s)" in out


def test_control_characters_in_model_names_are_escaped() -> None:
    code, out, _ = _run(str(FIXTURES / "vllm_escaped_model.prom"))
    assert code == 0
    assert 'org/we\\"ird\\\\model\\nv2' in out
    assert len(out.splitlines()) == 3  # the newline in the name does not break the table


def test_url(serve: Callable[..., Any]) -> None:
    body = (FIXTURES / "sglang.prom").read_bytes()
    server = serve(lambda path: {"body": body})
    code, out, err = _run(server.url(), as_json=True)
    assert (code, err) == (0, "")
    assert json.loads(out)["engine"] == "sglang"


def test_explicit_engine() -> None:
    code, out, _ = _run(str(FIXTURES / "vllm_v1.prom"), engine="vllm", as_json=True)
    assert code == 0 and json.loads(out)["engine"] == "vllm"


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/metrics"


@pytest.mark.parametrize(
    ("source", "engine", "fragment"),
    [
        ("/no/such/file.prom", "auto", "cannot read /no/such/file.prom: No such file or directory"),
        (str(FIXTURES), "auto", "is a directory"),
        (str(FIXTURES / "html_error.html"), "auto", "not a Prometheus exposition"),
        (
            str(FIXTURES / "vllm_truncated.prom"),
            "auto",
            "line 75: body does not end with a newline",
        ),
        (str(FIXTURES / "vllm_v1.prom"), "ollama", "unknown engine 'ollama'"),
        (str(FIXTURES / "vllm_v1.prom"), "tgi", "no tgi metrics found"),
        ("-", "auto", "no known inference-server metrics found"),
        ("http://", "auto", "bad URL"),
    ],
)
def test_bad_input_is_one_line_on_stderr(source: str, engine: str, fragment: str) -> None:
    code, out, err = _run(source, engine=engine, stdin=b"node_load1 0.5\n")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("tokenergy inspect: ")
    assert fragment in err
    assert "Traceback" not in err


def test_unreachable_url_is_one_line() -> None:
    code, _, err = _run(_refused_url())
    assert code == 1
    assert err.count("\n") == 1 and "refused" in err
