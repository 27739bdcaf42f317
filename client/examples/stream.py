"""The streaming tutorial's first example with the gateway's client in place of ``anthropic.Anthropic()``."""

from claude_gateway import Gateway

client = Gateway()  # the gateway at GATEWAY_TARGET (default 127.0.0.1:50051), token from GATEWAY_TOKEN

with client.messages.stream(
    max_tokens=1024,
    messages=[{"role": "user", "content": "Hello"}],
    model="claude-sonnet-4-6",
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
    print()

message = stream.get_final_message()
print(message.to_json(indent=None))
