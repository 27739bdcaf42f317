"""Python client of claude-grpc-gateway: ``Gateway`` and ``AsyncGateway``, shaped like ``anthropic.Anthropic``.

Events and messages are the anthropic SDK's types; failures raise ``GatewayError``. The generated
stubs are ``claude_gateway.v1.chat_pb2`` and ``chat_pb2_grpc``.
"""

from claude_gateway.client import AsyncGateway, Gateway
from claude_gateway.errors import GatewayError
from claude_gateway.streaming import AsyncMessageStream, MessageStream

__version__ = "0.2.0"

__all__ = ["AsyncGateway", "AsyncMessageStream", "Gateway", "GatewayError", "MessageStream", "__version__"]
