"""``python -m deltatune`` (and ``accelerate launch -m deltatune``) runs the CLI."""

import sys

from deltatune.cli import main

sys.exit(main())
