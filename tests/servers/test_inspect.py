"""`tokenergy inspect`: files, stdin and URLs; table and JSON; one-line errors."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.servers.inspect import display_model_names, inspect_command

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


@pytest.mark.parametrize(
    ("source", "stdin", "expected"),
    [
        ("ftp://example.org/metrics", b"", "unsupported URL scheme 'ftp' in ftp://example.org"),
        ("file:///etc/hosts", b"", "unsupported URL scheme 'file'"),
        ("-", b"", "standard input: empty body (no metrics at all)"),
        ("-", b"\n \n\t\n", "standard input: empty body (no metrics at all)"),
        ("-", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "standard input: binary data (16 bytes)"),
        ("-", bytes(range(256)) * 4, "standard input: binary data (1024 bytes)"),
    ],
    ids=["ftp", "file-url", "empty", "blank", "png", "all-bytes"],
)
def test_bad_sources_are_one_clear_line(source: str, stdin: bytes, expected: str) -> None:
    code, out, err = _run(source, stdin=stdin)
    assert (code, out) == (1, "")
    assert err.startswith(f"tokenergy inspect: {expected}")
    assert err.count("\n") == 1
    assert "No such file" not in err and "looked for" not in err
    # Nothing of the raw bytes is echoed.
    assert "PNG" not in err and "\x1a" not in err and "IHDR" not in err


def test_random_bytes_never_reach_the_terminal() -> None:
    noise = bytes((i * 7919 + 13) % 256 for i in range(2000))
    code, _, err = _run("-", stdin=noise)
    assert code == 1
    assert (
        err == "tokenergy inspect: standard input: binary data (2000 bytes), not a "
        "Prometheus text exposition\n"
    )


def test_one_bad_byte_in_text_is_named_by_the_parser() -> None:
    body = (FIXTURES / "vllm_v1.prom").read_bytes().replace(b"Llama", b"Ll\xffma", 1)
    code, _, err = _run("-", stdin=body)
    assert code == 1 and "not UTF-8: byte 0xff at offset" in err


def test_path_like_model_names_are_shortened_only_in_the_table() -> None:
    path = "/data/models/Meta-Llama-3-8B-Instruct"
    body = (
        f'sglang:prompt_tokens_total{{name="{path}"}} 12\n'
        f'sglang:generation_tokens_total{{name="{path}"}} 3\n'
        'sglang:prompt_tokens_total{name="org/hf-model"} 1\n'
    ).encode()
    _, out, _ = _run("-", stdin=body)
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["Meta-Llama-3-8B-Instruct", "org/hf-model"]
    _, out, _ = _run("-", stdin=body, as_json=True)
    assert set(json.loads(out)["models"]) == {path, "org/hf-model"}


def test_display_names_stay_whole_when_shortening_would_collide() -> None:
    names = display_model_names(["/a/llama", "/b/llama", "./qwen", "mistral", "/x/mistral"])
    assert names == {
        "/a/llama": "/a/llama",
        "/b/llama": "/b/llama",
        "./qwen": "qwen",
        "mistral": "mistral",
        "/x/mistral": "/x/mistral",
    }


def test_json_start_time_is_unix_seconds_or_null(serve: Callable[..., Any]) -> None:
    _, out, _ = _run(str(FIXTURES / "nim.prom"), as_json=True)
    assert json.loads(out)["start_time_seconds"] == 1767225600
    _, out, _ = _run(str(FIXTURES / "sglang.prom"), as_json=True)
    assert json.loads(out)["start_time_seconds"] is None


def test_no_token_counters_is_a_clear_answer_in_table_and_json() -> None:
    body = (
        b'nv_inference_request_success{model="resnet",version="1"} 40\n'
        b'nv_inference_pending_request_count{model="resnet",version="1"} 0\n'
    )
    code, out, _ = _run("-", stdin=body)
    assert code == 0
    assert out.splitlines() == [
        "engine: triton",
        "no token counters: none of nv_llm_input_token_len_sum, nv_llm_output_token_len_sum is "
        "in this triton exposition; Triton counts tokens only in the nv_llm_input_token_len / "
        "nv_llm_output_token_len histograms of the TensorRT-LLM and Python LLM backends",
    ]
    _, out, _ = _run("-", stdin=body, as_json=True)
    document = json.loads(out)
    assert document["token_counters"] is False
    assert document["models"]["resnet"]["input_tokens"] is None
    assert document["warnings"][0].startswith("no token counters: ")
