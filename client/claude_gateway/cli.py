"""The sample client: ``python -m client`` in the repository, ``python -m claude_gateway`` once installed.

Streams the reply text to stdout as it arrives, then usage on stderr. Exit codes: 0 done; 1 the call
failed (the gRPC status and its details on stderr); 2 a bad command line or request file (one line
on stderr); 141 stdout was closed before the reply ended (``| head``): the call is cancelled quietly,
with the status a command killed by SIGPIPE has.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from claude_gateway import __version__

if TYPE_CHECKING:
    from anthropic.types import Message
    from claude_gateway.client import Gateway

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_MODEL = "claude-sonnet-4-6"
PROG = "python -m client"
CLOSED_PIPE = 128 + 13  # the exit status of a command that SIGPIPE ended, as `yes | head -1` reports


class UsageError(Exception):
    """A bad command line or request file: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Stream one Claude reply through the gateway's ChatService: the text to stdout as it "
        "arrives, stop reason and token usage to stderr.",
        epilog="Exit status: 0 done; 1 the call failed (gRPC status and details on stderr); "
        "2 bad command line or request file; 141 stdout closed before the reply ended (| head).",
    )
    p.add_argument("prompt", nargs="*", help="the user message, words joined by spaces (ignored with --request)")
    p.add_argument(
        "--target",
        default=os.environ.get("GATEWAY_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help=f"gateway address (env GATEWAY_TARGET; default {DEFAULT_TARGET})",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default {DEFAULT_MODEL})")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=1024,
        metavar="N",
        help="most output tokens, an integer the gateway requires to be at least 1 (default 1024)",
    )
    p.add_argument("--system", metavar="TEXT", help="system prompt (default none)")
    p.add_argument(
        "--deadline",
        type=_positive_seconds,
        default=300.0,
        metavar="SECONDS",
        help="gRPC deadline for the whole call, a positive number (default 300)",
    )
    p.add_argument(
        "--request",
        metavar="FILE",
        help="send this Anthropic-shaped request body, a JSON object ('-' reads stdin), instead of a prompt",
    )
    p.add_argument(
        "--beta", action="append", default=[], metavar="FLAG", help="anthropic-beta flag, repeatable (default none)"
    )
    p.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="bearer token, sent as 'authorization: Bearer TOKEN' (default: env GATEWAY_TOKEN, else none); the "
        "gateway asks for one when it sets GATEWAY_AUTH_TOKEN (that token) or GATEWAY_CALLERS_FILE (a token whose "
        "sha256 the file lists)",
    )
    p.add_argument("--ca-cert", metavar="FILE", help="connect with TLS, trusting this PEM CA certificate")
    p.add_argument("--json", action="store_true", help="print every event as its Messages API JSON, one per line")
    p.add_argument("--unary", action="store_true", help="call CreateMessage and print the whole message as JSON")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    return parser().parse_args(argv)


def build_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request body: the --request file's JSON object, or one built from the prompt and flags."""
    if args.request:
        try:
            if args.request == "-":
                body = json.load(sys.stdin)
            else:
                with open(args.request, encoding="utf-8") as f:
                    body = json.load(f)
        except OSError as error:
            raise UsageError(f"--request {args.request}: {error.strerror or error}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UsageError(f"--request {args.request}: not JSON: {error}") from None
        if not isinstance(body, dict):
            raise UsageError(f"--request {args.request}: must hold a JSON object, got {type(body).__name__}")
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                raise UsageError(f"--request {args.request}: missing {key!r}")
        return body
    prompt = " ".join(args.prompt) or "Say hello to the gateway."
    body = {"model": args.model, "max_tokens": args.max_tokens, "messages": [{"role": "user", "content": prompt}]}
    if args.system:
        body["system"] = args.system
    return body


def run(args: argparse.Namespace) -> int:
    from claude_gateway.client import Gateway  # the SDK's types load here, after the command line checked out
    from claude_gateway.errors import GatewayError

    body = build_body(args)
    root_certificates = None
    if args.ca_cert:
        try:
            with open(args.ca_cert, "rb") as f:
                root_certificates = f.read()
        except OSError as error:
            raise UsageError(f"--ca-cert {args.ca_cert}: {error.strerror or error}") from None
    with Gateway(args.target, token=args.token or "", root_certificates=root_certificates) as client:
        try:
            if args.unary:
                message = client.messages.create(**body, betas=args.beta, timeout=args.deadline)
                print(message.to_json(indent=None))
            else:
                message = stream_reply(client, body, args)
        except GatewayError as error:
            print(f"\nerror: {error.describe()}", file=sys.stderr)
            return 1
    usage = message.usage
    print(
        f"\n[stop_reason={message.stop_reason} input_tokens={usage.input_tokens} output_tokens={usage.output_tokens}]",
        file=sys.stderr,
    )
    return 0


def stream_reply(client: Gateway, body: dict[str, Any], args: argparse.Namespace) -> Message:
    with client.messages.stream(**body, betas=args.beta, timeout=args.deadline) as stream:
        if args.json:
            for event in stream.raw_events:
                print(event.to_json(indent=None), flush=True)
        else:
            for text in stream.text_stream:
                sys.stdout.write(text)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return stream.get_final_message()


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(parse_args(sys.argv[1:] if argv is None else argv))
    except UsageError as error:
        print(f"{PROG}: error: {error} (see --help)", file=sys.stderr)
        code = 2
    except BrokenPipeError:
        # The reader of stdout went away (`| head -1`); leaving the `with` blocks cancelled the call. What
        # is still buffered for stdout must not be flushed at exit, which would raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = CLOSED_PIPE
    sys.exit(code)
