"""The server manager with a stand-in `vllm` command: start, health check, call, stop, and failures."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from harness.errors import ServerError
from harness.providers.base import Request
from harness.providers.openai_client import OpenAICompatible
from harness.providers.plan import ServerPlan
from harness.providers.server import ManagedServer, bundled_model_path, server_command, server_env


def test_vllm_command_line(fake_vllm: Path):
    command = server_command(ServerPlan("vllm", "Qwen/Qwen2.5-7B-Instruct", "qwen"), 8123)
    assert command == [str(fake_vllm), "serve", "Qwen/Qwen2.5-7B-Instruct", "--served-model-name", "qwen",
                       "--host", "127.0.0.1", "--port", "8123"]


def test_managed_vllm_serves_then_stops(fake_vllm: Path, tmp_path: Path):
    async def go():
        async with ManagedServer(ServerPlan("vllm", "org/model", "cand"), log_dir=tmp_path) as server:
            process = server.process
            provider = OpenAICompatible("vllm:org/model", "cand", server.base_url, max_retries=0)
            completion = await provider.complete(Request(messages=[{"role": "user", "content": "hi"}], params={}))
            await provider.aclose()
        return completion, process

    completion, process = asyncio.run(go())
    assert completion.error is None
    assert completion.text == '{"served": "cand", "model": "org/model"}'
    assert process.poll() is not None  # stopped and reaped


def test_server_that_dies_while_starting_reports_its_log(fake_vllm: Path, tmp_path: Path):
    async def go():
        async with ManagedServer(ServerPlan("vllm", "crash", "x"), log_dir=tmp_path):
            pass

    with pytest.raises(ServerError, match=r"vllm server exited with status 1 while starting: .*CUDA out of memory"):
        asyncio.run(go())


def test_missing_vllm_command(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ServerError, match="the `vllm` command is not installed"):
        server_command(ServerPlan("vllm", "m", "m"), 1)


def test_bundled_model_errors_name_the_fix(tmp_path: Path):
    with pytest.raises(ServerError, match="unknown local model 'llama-70b'; use one of smollm2-135m"):
        bundled_model_path("llama-70b")
    with pytest.raises(ServerError, match="does not exist"):
        bundled_model_path(str(tmp_path / "nope.gguf"))


def test_a_llama_cpp_server_does_not_inherit_variables_that_its_settings_read():
    env = {"CACHE": "fresh", "model": "x.gguf", "PORT": "1", "PATH": "/usr/bin", "HOME": "/root", "LIMIT": "5"}
    kept = server_env(ServerPlan("llama_cpp", "smollm2-135m", "smollm2-135m"), env)
    assert kept == {"PATH": "/usr/bin", "HOME": "/root", "LIMIT": "5"}
    assert server_env(ServerPlan("vllm", "org/m", "m"), env) == env


def test_the_smoke_test_stops_a_server_that_crashes_on_its_first_completion(fake_vllm: Path, tmp_path: Path,
                                                                             monkeypatch):
    """It answers /v1/models, then dies with SIGSEGV on the first real request, as a llama.cpp library built for
    another CPU does: the start fails with the signal, the log's last lines and where the log is."""
    monkeypatch.setenv("FAKE_VLLM_CRASH_AFTER", "0")

    async def go():
        async with ManagedServer(ServerPlan("vllm", "org/model", "cand"), log_dir=tmp_path):
            pass

    with pytest.raises(ServerError) as raised:
        asyncio.run(go())
    message = str(raised.value)
    assert message.startswith("vLLM server exited with SIGSEGV on its first completion (a multi-token prompt): ")
    assert "ggml: illegal instruction in the matrix kernel" in message and f"full log: {tmp_path}" in message


def test_the_smoke_test_gives_up_on_a_server_that_never_answers(fake_vllm: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_HANG", "1")
    started = []

    async def go():
        server = ManagedServer(ServerPlan("vllm", "org/model", "cand"), log_dir=tmp_path, smoke_timeout=1.5)
        started.append(server)
        async with server:
            pass

    with pytest.raises(ServerError, match=r"vLLM server did not answer its start-up completion within 2s"):
        asyncio.run(go())
    assert started[0].exit_status is not None  # stopped, not left running


def test_describe_exit_names_the_signal():
    import signal

    from harness.providers.server import describe_exit

    assert describe_exit(-signal.SIGSEGV) == "exited with SIGSEGV"
    assert describe_exit(1) == "exited with status 1"
    assert describe_exit(None) == "is running"
