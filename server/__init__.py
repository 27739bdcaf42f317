"""claude-grpc-gateway: the server."""
