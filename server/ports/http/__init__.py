"""The HTTP port (``GATEWAY_HTTP_LISTEN``): uvicorn serving Connect and gRPC-Web, and the chat page."""
