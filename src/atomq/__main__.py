"""``python -m atomq``: the same as the ``atomq`` command."""

from atomq.cli import main

main()
