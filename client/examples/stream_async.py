"""The same with asyncio: ``AsyncGateway`` in place of ``anthropic.AsyncAnthropic()``."""

import asyncio

from claude_gateway import AsyncGateway

client = AsyncGateway()


async def main() -> None:
    async with client.messages.stream(
        max_tokens=1024,
        messages=[{"role": "user", "content": "Hello"}],
        model="claude-sonnet-4-6",
    ) as stream:
        async for text in stream.text_stream:
            print(text, end="", flush=True)
        print()

    message = await stream.get_final_message()
    print(message.to_json(indent=None))


asyncio.run(main())
