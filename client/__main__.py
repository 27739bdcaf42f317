"""``python -m client``: the sample client (see ``claude_gateway.cli``)."""

from claude_gateway.cli import main

main()
