"""`python -m synthdp` (and `torchrun ... -m synthdp generate ...`): the command line."""

from synthdp.cli import main

main()
