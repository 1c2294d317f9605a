"""`python -m harness.cli`: the `harness` command."""

import sys

from harness.cli.main import main

# guarded: a process started by multiprocessing (the proxy's mirror) imports the main module again, as __mp_main__
if __name__ == "__main__":
    sys.exit(main())
