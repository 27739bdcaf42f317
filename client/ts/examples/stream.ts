// The streaming tutorial's TypeScript example with the gateway's client in place of `new Anthropic()`.
import { Gateway } from "@claude-gateway/client/node";

const client = new Gateway(); // the gateway at GATEWAY_TARGET (default 127.0.0.1:50051), token from GATEWAY_TOKEN

const stream = client.messages
  .stream({
    messages: [{ role: "user", content: "Hello" }],
    model: "claude-sonnet-4-6",
    max_tokens: 1024,
  })
  .on("text", (text) => {
    process.stdout.write(text);
  });

const message = await stream.finalMessage();
console.log();
console.log(JSON.stringify(message));
