"""The sample client: ``python -m client`` in the repository, ``python -m claude_gateway`` once installed.

Streams the reply text to stdout as it arrives, then usage on stderr. On failure it prints the
gRPC status and its details on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc
from claude_gateway.client import ChatClient, GatewayCallError

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MODEL = "claude-sonnet-4-6"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m client", description="Stream a Claude reply through the gateway.")
    parser.add_argument("prompt", nargs="*", help="the user message (ignored with --request)")
    parser.add_argument(
        "--target",
        default=os.environ.get("GATEWAY_TARGET", DEFAULT_TARGET),
        help=f"gateway address (env GATEWAY_TARGET, default {DEFAULT_TARGET})",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"default {DEFAULT_MODEL}")
    parser.add_argument("--max-tokens", type=int, default=1024, help="default 1024")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument(
        "--deadline",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="gRPC deadline for the whole call (default 300)",
    )
    parser.add_argument(
        "--request", metavar="FILE", help="send this Anthropic-shaped request JSON ('-' for stdin) instead of a prompt"
    )
    parser.add_argument("--beta", action="append", default=[], help="anthropic-beta flag (repeatable)")
    parser.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="bearer token, when the gateway sets GATEWAY_AUTH_TOKEN (env GATEWAY_TOKEN)",
    )
    parser.add_argument("--ca-cert", metavar="FILE", help="connect with TLS, trusting this PEM CA certificate")
    parser.add_argument("--json", action="store_true", help="print every event as its Anthropic JSON, one per line")
    parser.add_argument("--unary", action="store_true", help="call CreateMessage and print the whole message")
    return parser.parse_args(argv)


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.request:
        with sys.stdin if args.request == "-" else open(args.request, encoding="utf-8") as f:
            body: dict[str, Any] = json.load(f)
        return body
    prompt = " ".join(args.prompt) or "Say hello to the gateway."
    body = {"model": args.model, "max_tokens": args.max_tokens, "messages": [{"role": "user", "content": prompt}]}
    if args.system:
        body["system"] = args.system
    return body


def run(args: argparse.Namespace) -> int:
    body = build_body(args)
    if args.ca_cert:
        with open(args.ca_cert, "rb") as f:
            channel = grpc.secure_channel(args.target, grpc.ssl_channel_credentials(root_certificates=f.read()))
    else:
        channel = grpc.insecure_channel(args.target)
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    with channel:
        chat = ChatClient(channel, metadata=metadata)
        try:
            if args.unary:
                message = chat.create(body, betas=args.beta, timeout=args.deadline)
                print(json.dumps(message, ensure_ascii=False))
            else:
                message = stream_reply(chat, body, args)
        except GatewayCallError as error:
            print(f"\nerror: {error.describe()}", file=sys.stderr)
            return 1
    usage = message.get("usage") or {}
    print(
        f"\n[stop_reason={message.get('stop_reason')} input_tokens={usage.get('input_tokens')} "
        f"output_tokens={usage.get('output_tokens')}]",
        file=sys.stderr,
    )
    return 0


def stream_reply(chat: ChatClient, body: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    with chat.stream(body, betas=args.beta, timeout=args.deadline) as stream:
        if args.json:
            for event in stream:
                print(json.dumps(event, ensure_ascii=False), flush=True)
        else:
            for text in stream.text_stream:
                sys.stdout.write(text)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return stream.get_final_message()


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(parse_args(sys.argv[1:] if argv is None else argv)))
