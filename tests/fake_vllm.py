"""Stands in for the `vllm` command in tests: `vllm serve MODEL --served-model-name N --host H --port P`
serves the OpenAI wire format (tests/openai_server.py) until SIGTERM, echoing the model it was asked for.

FAKE_VLLM_CRASH_AFTER=k makes it kill itself with SIGSEGV on its (k+1)-th chat completion since it started (0: on
the first, the start-up smoke test), as a library that crashes on this CPU does; FAKE_VLLM_HANG=1 never answers a
completion."""

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import OpenAIServer, Reply

parser = argparse.ArgumentParser()
parser.add_argument("command", choices=["serve"])
parser.add_argument("model")
parser.add_argument("--served-model-name")
parser.add_argument("--host")
parser.add_argument("--port", type=int)
args = parser.parse_args()
if args.model == "crash":
    print("RuntimeError: CUDA out of memory", file=sys.stderr)
    sys.exit(1)
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: done.set())
reply = Reply(text=json.dumps({"served": args.served_model_name, "model": args.model}))
crash_after = os.environ.get("FAKE_VLLM_CRASH_AFTER")
answered = []


def respond(body: dict) -> Reply:
    if os.environ.get("FAKE_VLLM_HANG"):
        time.sleep(3600)
    if crash_after is not None and len(answered) >= int(crash_after):
        print("ggml: illegal instruction in the matrix kernel", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(60)  # the signal may reach another thread: this request must not be answered meanwhile
    answered.append(1)
    return reply


with OpenAIServer(respond, model=args.served_model_name, port=args.port):
    print("fake vllm ready", flush=True)
    done.wait()
