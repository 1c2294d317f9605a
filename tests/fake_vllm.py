"""Stands in for the `vllm` command in tests: `vllm serve MODEL --served-model-name N --host H --port P`
serves the OpenAI wire format (tests/openai_server.py) until SIGTERM, echoing the model it was asked for."""

import argparse
import json
import signal
import sys
import threading
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
with OpenAIServer(lambda body: reply, model=args.served_model_name, port=args.port):
    print("fake vllm ready", flush=True)
    done.wait()
