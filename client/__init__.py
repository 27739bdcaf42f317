"""The repository's sample client; the library itself is the ``claude_gateway`` package beside this file."""
