"""The names on the wire that the gateway and its callers share, declared once.

The protobuf types are the generated ``claude_gateway.v1`` modules; these are the strings around them:
the service's full name, the metadata keys the gateway sends, and the domain of its ``ErrorInfo``.
Server and clients import them from here (the server depends on this distribution).
"""

from __future__ import annotations

from claude_gateway.v1 import chat_pb2

SERVICE = chat_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name
"""``claude_gateway.v1.ChatService``: gRPC paths, health service names, reflection, Connect URLs."""

USAGE_KEY = "claude-gateway-usage"
"""Trailing metadata (Connect unary: a response header): the call's usage and cost, one JSON object."""

REQUEST_ID_KEY = "anthropic-request-id"
"""Initial metadata: the upstream's request id of the call, for Anthropic support and the log line."""

ERROR_DOMAIN = "claude-gateway"
"""``google.rpc.ErrorInfo.domain`` of every failure the gateway reports."""

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""gRPC's trailer carrying the ``google.rpc.Status`` with the rich details (ErrorInfo, RetryInfo...)."""

STREAM_ID_KEY = "claude-gateway-stream-id"
"""Initial metadata of StreamMessage and ResumeStream (a response header on Connect and gRPC-Web): the stream's id,
which ResumeStream and CancelStream take."""
