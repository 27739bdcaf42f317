#!/usr/bin/env node
// Node.js sample client of claude-grpc-gateway, on the TypeScript package @claude-gateway/client
// (client/ts, a workspace of the repo's package.json: `make node` installs and builds it).
//
//   node client/node/index.mjs --target 127.0.0.1:50051 --deadline 60 "Tell me a joke"
//
// Streams the reply text to stdout as it arrives and prints usage on stderr at the end. On failure it
// prints the gRPC status code name, its message and the decoded status details (ErrorInfo, RetryInfo,
// BadRequest, QuotaFailure) on stderr and exits 1. Exit codes: 0 done, 1 the call failed, 2 bad command line.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Gateway, GatewayError } from '@claude-gateway/client/node';

const PACKAGE = JSON.parse(readFileSync(new URL('../ts/package.json', import.meta.url), 'utf8'));
const DEFAULT_TARGET = process.env.GATEWAY_TARGET || '127.0.0.1:50051';
const DEFAULT_MODEL = 'claude-sonnet-4-6';

const USAGE = `usage: node client/node/index.mjs [options] [--] PROMPT...

Stream a Claude reply through the gateway's ChatService/StreamMessage: the text to stdout as it
arrives, stop reason and token usage to stderr.

options:
  --target HOST:PORT   gateway address (env GATEWAY_TARGET; default 127.0.0.1:50051)
  --deadline SECONDS   gRPC deadline for the whole call, a positive number (default 300)
  --model M            model name (default ${DEFAULT_MODEL})
  --max-tokens N       most output tokens, an integer the gateway requires to be at least 1 (default 1024)
  --system TEXT        system prompt (default none)
  --beta FLAG          anthropic-beta flag, repeatable (default none)
  --token TOKEN        bearer token, when the gateway sets GATEWAY_AUTH_TOKEN (env GATEWAY_TOKEN)
  --ca-cert FILE       connect with TLS, trusting this PEM CA certificate
  --json               print every event as its Messages API JSON, one per line
  --version            print the version and exit
  -h, --help           show this help

exit status: 0 done; 1 the call failed (gRPC status and details on stderr); 2 bad command line`;

function fail(message) {
  process.stderr.write(`node client/node/index.mjs: error: ${message} (see --help)\n`);
  process.exit(2);
}

function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        target: { type: 'string', default: DEFAULT_TARGET },
        deadline: { type: 'string', default: '300' },
        model: { type: 'string', default: DEFAULT_MODEL },
        'max-tokens': { type: 'string', default: '1024' },
        system: { type: 'string' },
        beta: { type: 'string', multiple: true, default: [] },
        token: { type: 'string', default: process.env.GATEWAY_TOKEN },
        'ca-cert': { type: 'string' },
        json: { type: 'boolean', default: false },
        version: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    fail(err.message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (values.version) {
    process.stdout.write(`node client/node/index.mjs ${PACKAGE.version}\n`);
    process.exit(0);
  }
  const deadline = Number(values.deadline);
  if (!Number.isFinite(deadline) || deadline <= 0) fail(`--deadline must be a positive number of seconds, got ${values.deadline}`);
  // Any integer goes through: the gateway, not this client, judges the value (0 is INVALID_ARGUMENT).
  if (!/^-?\d+$/.test(values['max-tokens'])) fail(`--max-tokens must be an integer, got ${values['max-tokens']}`);
  let ca;
  if (values['ca-cert'] !== undefined) {
    try {
      ca = readFileSync(values['ca-cert']);
    } catch (err) {
      fail(`--ca-cert ${values['ca-cert']}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`);
    }
  }
  return { ...values, deadline, maxTokens: Number(values['max-tokens']), ca, prompt: positionals.join(' ') || 'Say hello to the gateway.' };
}

async function main() {
  const args = parseCommandLine(process.argv.slice(2));
  const client = new Gateway({ target: args.target, ca: args.ca, token: args.token });
  const body = { model: args.model, max_tokens: args.maxTokens, messages: [{ role: 'user', content: args.prompt }] };
  if (args.system !== undefined) body.system = args.system;
  const stream = client.messages.stream(body, { betas: args.beta, timeoutMs: args.deadline * 1000 });
  process.once('SIGINT', () => stream.abort()); // ends the call with CANCELLED
  process.stdout.on('error', (err) => {
    if (err.code !== 'EPIPE') throw err;
    stream.abort(); // the reader went away (e.g. `| head`): stop the call and exit quietly
    process.exit(0);
  });
  let wroteText = false;
  if (args.json) stream.on('event', (event) => process.stdout.write(`${JSON.stringify(event)}\n`));
  else
    stream.on('text', (text) => {
      process.stdout.write(text);
      wroteText = true;
    });
  try {
    const message = await stream.finalMessage();
    if (wroteText) process.stdout.write('\n');
    const { usage } = message;
    process.stderr.write(`[stop_reason=${message.stop_reason} input_tokens=${usage.input_tokens} output_tokens=${usage.output_tokens}]\n`);
  } catch (err) {
    if (wroteText) process.stdout.write('\n');
    if (!(err instanceof GatewayError)) throw err;
    process.stderr.write(`error: ${err.describe()}\n`);
    process.exitCode = 1;
  }
}

await main();
