"""``python -m markov_lens.cli ARGS``: the same as ``markov-lens ARGS``."""

import sys

from markov_lens.cli import main

sys.exit(main())
