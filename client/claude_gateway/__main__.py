"""``python -m claude_gateway``: the sample client."""

from claude_gateway.cli import main

main()
