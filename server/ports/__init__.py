"""The ports a call arrives on: gRPC (``grpc``) and HTTP (``http``: Connect, gRPC-Web, the chat page).

Each port turns its protocol into a ``server.call.context.CallContext`` and runs the call through
``server.call.runner.Calls.run``; the ports never import each other (tests/test_layers.py).
"""
