// The official TypeScript SDK (@anthropic-ai/sdk) against the gateway's /v1/messages and against the
// simulator itself, for tests/test_ts_sdk.py, which starts both and compares what this prints.
//
//   node tests/node/anthropic_sdk.mjs corpus PLAN.json   one stream through the gateway, one direct, then one
//                                                       create through the gateway, per corpus body (the
//                                                       test queued each body three times)
//   node tests/node/anthropic_sdk.mjs calls PLAN.json    create, countTokens, models, and refusals
//
// PLAN.json: {gateway, token, sim, simKey, corpus: [{name, beta}], alpha, beta}. Prints one JSON document.
import { readFileSync } from 'node:fs';
import Anthropic from '@anthropic-ai/sdk';

const [mode, planFile] = process.argv.slice(2);
const plan = JSON.parse(readFileSync(planFile, 'utf8'));
const client = (baseURL, apiKey) => new Anthropic({ baseURL, apiKey, maxRetries: 0 });
const through = (token = plan.token) => client(plan.gateway, token);
const direct = (apiKey = plan.simKey) => client(plan.sim, apiKey);
const hello = (extra = {}) => ({
  model: 'claude-sonnet-4-6', max_tokens: 256, messages: [{ role: 'user', content: 'Hello gateway' }], ...extra,
});

function errorOf(error) {
  if (!(error instanceof Anthropic.APIError)) {
    if (!(error instanceof Anthropic.AnthropicError)) throw error;
    return { class: error.constructor.name, status: null, type: null, message: error.message };
  }
  return { class: error.constructor.name, status: error.status ?? null, type: error.type,
           retryAfter: error.headers?.get?.('retry-after') ?? null, requestId: error.requestID ?? null };
}

async function streamed(sdk, params, beta) {
  const out = { text: [], message: null, error: null };
  const stream = beta
    ? sdk.beta.messages.stream({ ...params, betas: [plan.beta] })
    : sdk.messages.stream(params);
  stream.on('text', (text) => out.text.push(text));
  try {
    out.message = await stream.finalMessage();
  } catch (error) {
    out.error = errorOf(error);
  }
  return out;
}

async function settled(promise) {
  try {
    return { value: await promise, error: null };
  } catch (error) {
    return { value: null, error: errorOf(error) };
  }
}

async function corpus() {
  const results = [];
  for (const { name, beta } of plan.corpus) {
    const got = await streamed(through(), hello(), beta);
    const want = await streamed(direct(), hello(), beta);
    const params = hello();
    const whole = await settled(beta ? through().beta.messages.create({ ...params, betas: [plan.beta] })
                                     : through().messages.create(params));
    results.push({ name, through: got, direct: want, created: { message: whole.value, error: whole.error } });
  }
  return results;
}

const TOOLS = [{ name: 'get_weather', description: 'Weather in a city',
  input_schema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } }];

async function calls() {
  const out = { create: [], count: [], models: {}, refusals: {} };
  const bodies = [
    hello(),
    hello({ messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: TOOLS }),
    hello({ max_tokens: 40, thinking: { type: 'enabled', budget_tokens: 20 } }),
  ];
  for (const params of bodies) {
    out.create.push([await through().messages.create(params), await direct().messages.create(params)]);
    const { max_tokens: _, ...count } = params;
    out.count.push([await through().messages.countTokens(count), await direct().messages.countTokens(count)]);
  }
  const listed = async (sdk) => { const all = []; for await (const m of sdk.models.list()) all.push(m); return all; };
  out.models.list = [await listed(through()), await listed(direct())];
  out.models.retrieve = [await through().models.retrieve('claude-sonnet-4-6'), await direct().models.retrieve('claude-sonnet-4-6')];
  out.models.alpha = await listed(through(plan.alpha));

  const alpha = through(plan.alpha);
  const refuse = (status, type, retry = '') => hello({
    messages: [{ role: 'user', content: `Hi [[sim:http_error ${status} ${type} ${retry}]]` }],
  });
  out.refusals.auth = [await settled(through('tok-unknown').messages.create(hello())),
                       await settled(direct('sk-wrong').messages.create(hello()))];
  out.refusals.permission = [await settled(alpha.messages.create(hello({ model: 'big' }))),
                             await settled(direct().messages.create(refuse(403, 'permission_error')))];
  out.refusals.badRequest = [await settled(alpha.messages.create(hello({ max_tokens: 0 }))),
                             await settled(direct().messages.create(hello({ max_tokens: 0 })))];
  for (let i = 0; i < 3; i++) await alpha.messages.countTokens({ model: 'chat', messages: hello().messages });
  out.refusals.rateLimit = [await settled(alpha.messages.create(hello({ model: 'chat' }))),
                            await settled(direct().messages.create(refuse(429, 'rate_limit_error', 30)))];
  out.refusals.notFound = [await settled(alpha.models.retrieve('big')), await settled(direct().models.retrieve('big'))];
  const stream = alpha.messages.stream(hello({ model: 'chat', max_tokens: 5 }));
  out.refusals.streamRateLimit = await settled(stream.finalMessage());
  return out;
}

const result = mode === 'corpus' ? await corpus() : await calls();
process.stdout.write(JSON.stringify(result));
