// @claude-gateway/client against a real gateway on the simulator. tests/test_ts_client.py starts them
// and runs this file with GATEWAY_TARGET (plain), GATEWAY_TLS_TARGET + GATEWAY_CA + GATEWAY_TEST_TOKEN
// (TLS and a caller token) and SIM_URL + SIM_KEY (the simulator itself, for the Anthropic SDK).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { test } from 'node:test';
import Anthropic from '@anthropic-ai/sdk';
import { Code } from '@connectrpc/connect';
import { Gateway, GatewayError, USAGE_TRAILER, eventToJson, usageOf } from '@claude-gateway/client/node';

const env = process.env;
const skip = env.GATEWAY_TARGET ? false : 'needs a gateway: run by tests/test_ts_client.py';
const MODEL = 'claude-sonnet-4-6';
const hello = (extra = {}) => ({ model: MODEL, max_tokens: 12, messages: [{ role: 'user', content: 'Hello' }], ...extra });
const client = () => new Gateway({ target: env.GATEWAY_TARGET });
const sdk = () => new Anthropic({ baseURL: env.SIM_URL, apiKey: env.SIM_KEY, maxRetries: 0 });

/** A message without what differs between two calls (its id) and what only the SDK's parse helper adds. */
function comparable(message) {
  const { id: _id, parsed_output: _parsed, ...rest } = message;
  if (rest.stop_details == null) delete rest.stop_details; // the SDK leaves it undefined, the gateway's accumulator null
  return rest;
}

test('on("text") streams what the SDK streams and finalMessage() equals its final message', { skip }, async () => {
  const texts = [];
  const stream = client().messages.stream(hello()).on('text', (text) => texts.push(text));
  const message = await stream.finalMessage();
  const direct = sdk().messages.stream(hello());
  const sdkTexts = [];
  direct.on('text', (text) => sdkTexts.push(text));
  const want = await direct.finalMessage();
  assert.deepEqual(texts, sdkTexts);
  assert.equal(await stream.finalText(), texts.join(''));
  assert.deepEqual(comparable(message), comparable(want));
  assert.match(stream.requestId, /^req_/);
});

test('usageOf() reads the usage and cost trailer of a finished call, and of a failed one', { skip }, async () => {
  const stream = client().messages.stream(hello());
  const message = await stream.finalMessage();
  const report = usageOf(stream.trailers);
  assert.equal(report.model, MODEL);
  assert.equal(report.usage.output_tokens, message.usage.output_tokens);
  assert.equal(report.usage.input_tokens, message.usage.input_tokens);
  assert.ok(typeof report.cost_usd === 'number' && report.cost_usd > 0, String(report.cost_usd));
  assert.equal(report.partial, false);
  // usageOf reads the fields it types; the trailer may carry more (response_model, the model that served).
  const { response_model: _served, ...typed } = JSON.parse(stream.trailers.get(USAGE_TRAILER));
  assert.deepEqual(report, { ...typed, model: MODEL });

  const failing = client().messages.stream(hello({ messages: [{ role: 'user', content: 'Hi [[sim:error_event 3 api_error]]' }] }));
  const error = await failing.finalMessage().then(() => assert.fail('the call should fail'), (e) => e);
  assert.ok(error instanceof GatewayError);
  assert.equal(usageOf(error.metadata).partial, true);
  assert.equal(usageOf(undefined), undefined);
});

test('async iteration yields the events the SDK yields, as Messages API JSON', { skip }, async () => {
  const got = [];
  for await (const event of client().messages.stream(hello())) got.push(event);
  const want = [];
  for await (const event of await sdk().messages.create({ ...hello(), stream: true })) want.push(event);
  assert.equal(got[0].type, 'message_start');
  assert.equal(got.at(-1).type, 'message_stop');
  assert.deepEqual(got.slice(1), want.slice(1)); // message_start carries the message id, which differs
  assert.deepEqual(comparable(got[0].message), comparable(want[0].message));
});

test('on("event") passes each event with the message accumulated so far', { skip }, async () => {
  const seen = [];
  const stream = client().messages.stream(hello({ max_tokens: 3 }));
  stream.on('event', (event, snapshot) => seen.push([event.type, snapshot.content[0]?.text]));
  await stream.done();
  assert.deepEqual(seen.at(0), ['message_start', undefined]);
  assert.deepEqual(seen.at(-1), ['message_stop', 'Hello the simulator']);
});

test('abort() cancels the call: finalMessage rejects with CANCELLED and "abort" fires', { skip }, async () => {
  const stream = client().messages.stream(hello({ max_tokens: 500, messages: [{ role: 'user', content: 'Hi [[sim:stall 3]]' }] }));
  const aborted = new Promise((resolve) => stream.on('abort', resolve));
  stream.on('connect', () => stream.abort());
  await assert.rejects(stream.finalMessage(), (error) => error instanceof GatewayError && error.code === Code.Canceled);
  assert.equal((await aborted).codeName, 'CANCELLED');
  assert.equal(stream.ended, true);
});

test('breaking out of for await aborts the call', { skip }, async () => {
  const stream = client().messages.stream(hello({ max_tokens: 500, messages: [{ role: 'user', content: 'Hi [[sim:stall 4]]' }] }));
  for await (const event of stream) if (event.type === 'content_block_delta') break;
  await assert.rejects(stream.done(), (error) => error.code === Code.Canceled);
});

test('timeoutMs is the deadline: a stalled reply ends with DEADLINE_EXCEEDED', { skip }, async () => {
  const started = Date.now();
  const stream = client().messages.stream(hello({ messages: [{ role: 'user', content: 'Hi [[sim:stall 3]]' }] }), { timeoutMs: 300 });
  await assert.rejects(stream.finalMessage(), (error) => error.codeName === 'DEADLINE_EXCEEDED');
  assert.ok(Date.now() - started < 10_000);
});

test('status details are decoded: BadRequest, ErrorInfo and RetryInfo', { skip }, async () => {
  const bad = await client().messages.create(hello({ max_tokens: 0 })).catch((e) => e);
  assert.ok(bad instanceof GatewayError);
  assert.equal(bad.codeName, 'INVALID_ARGUMENT');
  assert.deepEqual(bad.violations, [{ field: 'params.max_tokens', description: 'must be at least 1, got 0' }]);
  assert.equal(bad.errorInfo.reason, 'INVALID_REQUEST');
  const limited = client().messages.stream(hello({ messages: [{ role: 'user', content: 'hi [[sim:http_error 429 rate_limit_error 3]]' }] }), { timeoutMs: 2000 });
  const error = await limited.finalMessage().catch((e) => e);
  assert.equal(error.codeName, 'RESOURCE_EXHAUSTED');
  assert.equal(error.errorType, 'rate_limit_error');
  assert.equal(error.retryDelaySeconds, 3);
  assert.match(error.describe(), /retry after: 3s/);
});

test('create() returns the message the stream accumulates', { skip }, async () => {
  const created = await client().messages.create(hello({ max_tokens: 7 }));
  const streamed = await client().messages.stream(hello({ max_tokens: 7 })).finalMessage();
  assert.deepEqual(comparable(created), comparable(streamed));
});

test('TLS and a token reach a guarded gateway; without the token the call is UNAUTHENTICATED', { skip }, async () => {
  const ca = readFileSync(env.GATEWAY_CA);
  const guarded = new Gateway({ target: env.GATEWAY_TLS_TARGET, ca, token: env.GATEWAY_TEST_TOKEN });
  assert.match(await guarded.messages.stream(hello({ max_tokens: 3 })).finalText(), /^Hello/);
  const anonymous = new Gateway({ target: env.GATEWAY_TLS_TARGET, ca, token: '' });
  const error = await anonymous.messages.create(hello({ max_tokens: 3 })).catch((e) => e);
  assert.equal(error.codeName, 'UNAUTHENTICATED');
});

test('the generated Connect client gives protobuf-es events that eventToJson turns into the API JSON', { skip }, async () => {
  const gateway = client();
  const events = [];
  const request = { params: { model: MODEL, maxTokens: 3, messages: [{ role: 'user', contentText: 'Hello' }] } };
  for await (const response of gateway.rpc.streamMessage(request, { timeoutMs: 10_000 })) events.push(...response.events);
  assert.equal(events[0].type.case, 'messageStart');
  const json = events.map(eventToJson);
  assert.equal(json.at(-1).type, 'message_stop');
  assert.equal(json.filter((e) => e.type === 'content_block_delta').map((e) => e.delta.text).join(''), 'Hello the simulator');
});

/** A TCP proxy to `target` whose cut() resets every open connection, as a network that goes away does. */
async function proxy(target) {
  const [host, port] = target.split(':');
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    target: `127.0.0.1:${server.address().port}`,
    cuts: 0,
    cut() {
      this.cuts += 1;
      for (const s of sockets) s.resetAndDestroy();
    },
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(resolve);
    }),
  };
}

test('a resumable stream cut mid-way resumes by itself: the same text and final message, usage once', { skip }, async () => {
  const paced = hello({ max_tokens: 256, messages: [{ role: 'user', content: 'Resume me [[sim:tokens 60]] [[sim:tps 50]]' }] });
  const whole = client().messages.stream(paced);
  const wantTexts = [];
  whole.on('text', (text) => wantTexts.push(text));
  const want = await whole.finalMessage();
  const cutter = await proxy(env.GATEWAY_TARGET);
  try {
    const texts = [];
    const reconnects = [];
    const stream = new Gateway({ target: cutter.target }).messages.stream(paced, { detachGraceSeconds: 30 });
    stream.on('reconnect', (attempt) => reconnects.push(attempt));
    stream.on('text', (text) => {
      texts.push(text);
      if (texts.length === 10) cutter.cut();
    });
    const got = await stream.finalMessage();
    assert.equal(cutter.cuts, 1);
    assert.deepEqual(reconnects, [1]);
    assert.equal(stream.resumes, 1);
    assert.deepEqual(texts, wantTexts);
    assert.deepEqual(comparable(got), comparable(want));
    assert.match(stream.streamId, /^[A-Za-z0-9_-]{22}$/);
    assert.match(stream.requestId, /^req_/);
    assert.equal(JSON.parse(stream.trailers.get('claude-gateway-usage')).usage.output_tokens, 60);
  } finally {
    await cutter.close();
  }
});

test('abort() of a resumable stream cancels it at the gateway: a resume of it then ends CANCELLED', { skip }, async () => {
  const gateway = client();
  const stream = gateway.messages.stream(
    hello({ max_tokens: 500, messages: [{ role: 'user', content: 'Hi [[sim:tokens 400]] [[sim:tps 20]]' }] }),
    { detachGraceSeconds: 30 },
  );
  await new Promise((resolve) => stream.once('text', resolve));
  stream.abort();
  await assert.rejects(stream.done(), (error) => error.code === Code.Canceled);
  const resumed = [];
  const error = await (async () => {
    for await (const response of gateway.rpc.resumeStream({ streamId: stream.streamId, afterSeq: 0n }, { timeoutMs: 10_000 })) resumed.push(response);
  })().catch((e) => GatewayError.from(e));
  assert.equal(error.codeName, 'CANCELLED');
  assert.equal(error.errorInfo.reason, 'STREAM_CANCELLED');
  assert.ok(resumed.length > 0);
});
