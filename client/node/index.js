#!/usr/bin/env node
// Node.js sample client of claude-grpc-gateway: streams one Claude reply through ChatService.
//
//   node client/node/index.js --target 127.0.0.1:50051 --deadline 60 "Tell me a joke"
//
// Streams the reply text to stdout as it arrives and prints usage on stderr at the end. On failure
// it prints the gRPC status code name, its message and the decoded `grpc-status-details-bin`
// (google.rpc.Status with ErrorInfo / RetryInfo / BadRequest ...) on stderr and exits 1.
// Exit codes: 0 done, 1 the call failed, 2 bad command line.
//
// Dependencies (repo-root package.json, `make node` or `npm ci`): @grpc/grpc-js,
// @grpc/proto-loader, protobufjs. The API is loaded at run time from
// protos/claude_gateway/v1/chat.proto with keepCase, so field names are the proto's (and the
// Messages API's) snake_case JSON keys. protos/google/rpc/{status,error_details}.proto beside this
// file are vendored unchanged from googleapis-common-protos 1.76.0 (Apache-2.0).
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO_PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const VENDORED_PROTOS = path.join(__dirname, 'protos');
// protobufjs ships google/protobuf/*.proto (the well-known types struct, any, duration ... are
// also built in); proto-loader resolves imports through these include directories.
const WELL_KNOWN_PROTOS = path.dirname(require.resolve('protobufjs/package.json'));

const DEFAULT_TARGET = process.env.GATEWAY_TARGET || '127.0.0.1:50051';
const DEFAULT_MODEL = 'claude-sonnet-4-6';
const MAX_MESSAGE_BYTES = 32 * 1024 * 1024; // the gateway's default GATEWAY_MAX_MESSAGE_BYTES

const USAGE = `usage: node client/node/index.js [options] [--] PROMPT...

Stream a Claude reply through the gateway's ChatService/StreamMessage.

options:
  --target HOST:PORT   gateway address (env GATEWAY_TARGET, default 127.0.0.1:50051)
  --deadline SECONDS   gRPC deadline for the whole call (default 300)
  --model M            model name (default ${DEFAULT_MODEL})
  --max-tokens N       most output tokens (default 1024)
  --system TEXT        system prompt
  --beta FLAG          anthropic-beta flag (repeatable)
  -h, --help           show this help`;

function fail(message) {
  process.stderr.write(`${message}\n\n${USAGE}\n`);
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
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    fail(`error: ${err.message}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const deadline = Number(values.deadline);
  if (!Number.isFinite(deadline) || deadline <= 0) fail(`error: --deadline must be a positive number of seconds, got ${values.deadline}`);
  // Any integer goes through: the gateway, not this client, judges the value (0 is INVALID_ARGUMENT).
  if (!/^-?\d+$/.test(values['max-tokens'])) fail(`error: --max-tokens must be an integer, got ${values['max-tokens']}`);
  return {
    target: values.target,
    deadlineSeconds: deadline,
    model: values.model,
    maxTokens: Number(values['max-tokens']),
    system: values.system,
    betas: values.beta,
    prompt: positionals.join(' ') || 'Say hello to the gateway.',
  };
}

function loadChatService() {
  const definition = protoLoader.loadSync(path.join(REPO_PROTOS, 'claude_gateway', 'v1', 'chat.proto'), {
    keepCase: true, // field names as in the proto: the Messages API's JSON keys
    longs: String,
    enums: String,
    defaults: false, // unset optional fields stay undefined: absent is not zero
    oneofs: true, // a oneof `type` reads as the name of its set arm, e.g. event.type === 'message_delta'
    includeDirs: [REPO_PROTOS, WELL_KNOWN_PROTOS],
  });
  return grpc.loadPackageDefinition(definition).claude_gateway.v1.ChatService;
}

// google.rpc.Status and its standard detail messages, for decoding grpc-status-details-bin.
function loadStatusTypes() {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    const vendored = path.join(VENDORED_PROTOS, target);
    return target.startsWith('google/rpc/') ? vendored : target; // google/protobuf/*: built into protobufjs
  };
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return root;
}

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

function seconds(duration) {
  if (!duration) return 0;
  return Number(duration.seconds || 0) + (duration.nanos || 0) / 1e9;
}

// Lines describing one detail (a google.protobuf.Any) of the status.
function describeDetail(root, any) {
  const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
  let type;
  try {
    type = root.lookupType(typeName);
  } catch {
    return [`  detail ${any.type_url} (${any.value.length} bytes, not decoded)`];
  }
  const detail = type.toObject(type.decode(any.value), { longs: String, defaults: false });
  switch (typeName) {
    case 'google.rpc.ErrorInfo': {
      const meta = Object.entries(detail.metadata || {})
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([k, v]) => `${k}=${v}`)
        .join(' ');
      return [`  reason: ${detail.reason} (${detail.domain}) ${meta}`.trimEnd()];
    }
    case 'google.rpc.RetryInfo':
      return [`  retry after: ${seconds(detail.retry_delay)}s`];
    case 'google.rpc.BadRequest':
      return (detail.field_violations || []).map((v) => `  bad field ${v.field}: ${v.description}`);
    default:
      return [`  ${typeName}: ${JSON.stringify(detail)}`];
  }
}

// Every line to print for a failed call: code name and message, then each decoded detail.
function describeError(err) {
  const lines = [`${CODE_NAMES[err.code] || `code ${err.code}`}: ${err.details}`];
  const raw = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (raw.length > 0) {
    try {
      const root = loadStatusTypes();
      const Status = root.lookupType('google.rpc.Status');
      const status = Status.toObject(Status.decode(raw[0]), { defaults: false });
      for (const any of status.details || []) lines.push(...describeDetail(root, any));
    } catch (decodeError) {
      lines.push(`  (grpc-status-details-bin not decodable: ${decodeError.message})`);
    }
  }
  return lines.join('\n');
}

function buildRequest(args) {
  const params = {
    model: args.model,
    max_tokens: args.maxTokens,
    messages: [{ role: 'user', content_text: args.prompt }], // JSON "content": "<prompt>"
  };
  if (args.system !== undefined) params.system_text = args.system;
  return { params, betas: args.betas };
}

function main() {
  const args = parseCommandLine(process.argv.slice(2));
  const ChatService = loadChatService();
  const client = new ChatService(args.target, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    // Long "thinking" pauses send nothing; pings keep idle proxies from cutting the stream.
    'grpc.keepalive_time_ms': 30000,
    'grpc.keepalive_timeout_ms': 20000,
  });

  const deadline = new Date(Date.now() + args.deadlineSeconds * 1000);
  const call = client.StreamMessage(buildRequest(args), { deadline });
  process.once('SIGINT', () => call.cancel()); // ends the call with CANCELLED
  process.stdout.on('error', (err) => {
    if (err.code !== 'EPIPE') throw err;
    call.cancel(); // the reader went away (e.g. `| head`): stop the call and exit quietly
    process.exit(0);
  });

  const usage = {};
  let stopReason;
  let wroteText = false;
  let failure = null;

  call.on('data', (response) => {
    for (const event of response.events || []) {
      switch (event.type) {
        case 'message_start':
          Object.assign(usage, event.message_start.message && event.message_start.message.usage);
          break;
        case 'content_block_delta': {
          const delta = event.content_block_delta.delta;
          if (delta && delta.type === 'text_delta') {
            process.stdout.write(delta.text_delta.text);
            wroteText = true;
          }
          break;
        }
        case 'message_delta': {
          // Cumulative counts; an absent count is unchanged since message_start.
          const md = event.message_delta;
          for (const [key, value] of Object.entries(md.usage || {})) if (value !== undefined) usage[key] = value;
          if (md.delta && md.delta.stop_reason !== undefined) stopReason = md.delta.stop_reason;
          break;
        }
        default: // ping, block start/stop, message_stop, raw_json (new event types): nothing to print
          break;
      }
    }
  });
  call.on('error', (err) => {
    failure = err;
  });
  call.on('status', () => {
    // Emitted once, after every message and after 'error' when the call failed.
    if (wroteText) process.stdout.write('\n');
    client.close();
    if (failure) {
      process.stderr.write(`error: ${describeError(failure)}\n`);
      process.exitCode = 1;
      return;
    }
    process.stderr.write(
      `[stop_reason=${stopReason} input_tokens=${usage.input_tokens} output_tokens=${usage.output_tokens}]\n`,
    );
  });
}

main();
