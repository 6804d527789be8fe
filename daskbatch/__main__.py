"""``python -m daskbatch``: the ``daskbatch`` command, for a job script or an environment
whose ``bin`` folder is not on ``PATH`` (``python -m daskbatch run sweep.toml``)."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a worker process imports the main module again
    sys.exit(main())
