// The TypeScript codec against every recorded stream: Messages API JSON -> protobuf-es message ->
// wire bytes -> message -> JSON gives back the same object, as the Python codec does.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { fromApiJson, toApiJson, pb } from '@claude-gateway/client';

const OWN = new URL('../../../tests/fixtures/sse/', import.meta.url);
const SHARED = new URL('../../../../shared/fixtures/anthropic-sse/', import.meta.url);

function streams() {
  const dirs = [OWN, ...(existsSync(SHARED) ? [SHARED] : [])];
  return dirs.flatMap((dir) => readdirSync(dir).filter((n) => n.endsWith('.sse')).map((n) => new URL(n, dir)));
}

function sseEvents(path) {
  return readFileSync(path, 'utf8')
    .split('\n\n')
    .map((frame) => frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()))
    .filter((data) => data.length > 0)
    .map((data) => JSON.parse(data.join('\n')));
}

function roundTrip(schema, json) {
  const bytes = toBinary(schema, fromApiJson(schema, json));
  return toApiJson(schema, fromBinary(schema, bytes));
}

test('every event of every recorded stream survives JSON -> proto -> bytes -> JSON unchanged', () => {
  const paths = streams();
  assert.ok(paths.length >= 7, `expected the project's recorded streams, found ${paths.length}`);
  let events = 0;
  for (const path of paths) {
    for (const event of sseEvents(path)) {
      if (event.type === 'error') continue; // errors end the call as a status, never as an event
      assert.deepEqual(roundTrip(pb.MessageStreamEventSchema, event), event, `${path.pathname}: ${JSON.stringify(event)}`);
      events += 1;
    }
  }
  assert.ok(events > 50);
});

test('known events land in their typed arms and unknown ones in raw_json', () => {
  const delta = fromApiJson(pb.MessageStreamEventSchema, { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hi' } });
  assert.equal(delta.type.case, 'contentBlockDelta');
  assert.equal(delta.type.value.delta.type.case, 'textDelta');
  assert.equal(delta.type.value.delta.type.value.text, 'Hi');
  const future = { type: 'brand_new_event', data: [1, 2.5, null] };
  const raw = fromApiJson(pb.MessageStreamEventSchema, future);
  assert.equal(raw.type.case, 'rawJson');
  assert.equal(raw.type.value.type, 'brand_new_event');
  assert.deepEqual(toApiJson(pb.MessageStreamEventSchema, raw), future);
});

test('request bodies with every JSON form of the API round-trip unchanged', () => {
  const bodies = [
    { model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'plain string' }], system: 'be brief' },
    {
      model: 'm',
      max_tokens: 5,
      system: [{ type: 'text', text: 'sys', cache_control: { type: 'ephemeral', ttl: '1h' } }],
      messages: [
        { role: 'user', content: [{ type: 'text', text: 'look' }, { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'AAAA' } }] },
        { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'f', input: { a: 1, b: [true, null] } }] },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'ok', is_error: false }] },
      ],
      tools: [
        { name: 'f', description: 'd', input_schema: { type: 'object', properties: { a: { type: 'integer' } } } },
        { type: 'web_search_20250305', name: 'web_search', max_uses: 2 },
      ],
      tool_choice: { type: 'auto', disable_parallel_tool_use: true },
      thinking: { type: 'enabled', budget_tokens: 1024 },
      metadata: { user_id: 'u' },
      stop_sequences: ['zzz'],
      container: 'container_1',
      future_key: { anything: [1, 2] },
      service_tier: null,
    },
  ];
  for (const body of bodies) assert.deepEqual(roundTrip(pb.MessageCreateParamsSchema, body), body);
});
