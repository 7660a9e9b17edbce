// End-to-end tests of logprobs / top_logprobs with the official `openai`
// SDK: the shapes of chat's and the legacy completions' logprobs, greedy
// tokens against their own top_logprobs, streamed equal to whole, one
// entry per completion token, speculation's tokens, the 400s, and the
// greedy tokens' logprobs against the pinned llama-server's (stories260K).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { STORIES, MODEL_ID, LLAMA_SERVER, TEST_MODELS, startServer, stopServer, servers,
         client, startLlamaServer, GREEDY } from './helpers.mjs';

const LLAMA3 = join(TEST_MODELS, 'vocab-llama-bpe.gguf');
const WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather', description: 'The weather in a city', strict: true,
    parameters: { type: 'object', additionalProperties: false, required: ['city'],
                  properties: { city: { type: 'string', maxLength: 10 } } },
  },
};

const needStories = !STORIES && 'needs stories260K (repetitive enough to draft)';
const needBoth = (!STORIES || !LLAMA_SERVER) && 'needs stories260K and llama-server';

let S; // our server
let L = null; // llama-server on the same model, when there is one

before(async () => {
  S = await startServer();
  if (STORIES && LLAMA_SERVER) L = await startLlamaServer();
});
after(async () => {
  if (L) L.kill();
  for (const s of servers) await stopServer(s);
});

const MSGS = [{ role: 'user', content: 'Tell me a story about a cat.' }];
const chatReq = (extra = {}) => ({ model: MODEL_ID, messages: MSGS, max_tokens: 24, ...GREEDY,
                                   logprobs: true, top_logprobs: 5, ...extra });

function checkToken(t, what) {
  assert.equal(typeof t.token, 'string', what);
  assert.ok(Number.isFinite(t.logprob) && t.logprob <= 0, `${what}: logprob ${t.logprob}`);
  assert.ok(Array.isArray(t.bytes) && t.bytes.every((b) => Number.isInteger(b) && b >= 0 &&
                                                        b < 256), what);
  const s = Buffer.from(t.bytes).toString();
  // valid UTF-8 bytes are the token's text; a piece of a character is spelled bytes:\xNN
  if (Buffer.from(s).equals(Buffer.from(t.bytes))) assert.equal(t.token, s, what);
  else assert.match(t.token, /^bytes:(\\x[0-9a-f]{2})+$/, what);
}

/* Checks a chat logprobs.content array; returns it. */
function checkContent(content, nTop, greedy) {
  assert.ok(Array.isArray(content) && content.length > 0);
  content.forEach((e, i) => {
    checkToken(e, `token ${i}`);
    assert.equal(e.top_logprobs.length, nTop, `token ${i}`);
    e.top_logprobs.forEach((t, k) => {
      checkToken(t, `token ${i} top ${k}`);
      assert.equal(t.top_logprobs, undefined);
      if (k > 0) assert.ok(e.top_logprobs[k - 1].logprob >= t.logprob, `token ${i}: not sorted`);
    });
    if (nTop > 0) {
      assert.ok(e.logprob <= e.top_logprobs[0].logprob, `token ${i}: above the top`);
      if (greedy) { // the greedy token is the most likely one, with the same value
        assert.equal(e.token, e.top_logprobs[0].token, `token ${i}`);
        assert.deepEqual(e.bytes, e.top_logprobs[0].bytes, `token ${i}`);
        assert.equal(e.logprob, e.top_logprobs[0].logprob, `token ${i}`);
      }
    }
  });
  return content;
}

/* Two runs of one greedy request give the same tokens; the values agree
 * to float rounding (a prompt-cache hit decodes the prompt in other
 * chunks, and so rounds differently). */
function sameContent(a, b, what) {
  assert.equal(a.length, b.length, what);
  a.forEach((e, i) => {
    for (const [x, y] of [[e, b[i]], ...e.top_logprobs.map((t, k) => [t, b[i].top_logprobs[k]])]) {
      assert.equal(x.token, y.token, `${what}: token ${i}`);
      assert.deepEqual(x.bytes, y.bytes, `${what}: token ${i}`);
      assert.ok(Math.abs(x.logprob - y.logprob) < 1e-4 * (1 + Math.abs(y.logprob)),
                `${what}: token ${i}: ${x.logprob} vs ` +
                `${y.logprob}`);
    }
    assert.equal(e.top_logprobs.length, b[i].top_logprobs.length, `${what}: token ${i}`);
  });
}

const joined = (content) => Buffer.concat(content.map((e) => Buffer.from(e.bytes)));

test('chat: logprobs with top_logprobs, greedy tokens are their own top-1', async () => {
  const c = client(S);
  const a = await c.chat.completions.create(chatReq());
  const ch = a.choices[0];
  const content = checkContent(ch.logprobs.content, 5, true);
  assert.equal(content.length, a.usage.completion_tokens);
  if (ch.finish_reason === 'length') // every token's bytes are the text
    assert.equal(joined(content).toString(), ch.message.content);
  // the probabilities of a whole vocabulary: the top 20 sum to at most 1
  const b = await c.chat.completions.create(chatReq({ top_logprobs: 20, max_tokens: 4 }));
  for (const e of checkContent(b.choices[0].logprobs.content, 20, true)) {
    const mass = e.top_logprobs.reduce((s, t) => s + Math.exp(t.logprob), 0);
    assert.ok(mass <= 1 + 1e-4 && mass > 0, String(mass));
  }
  // the same tokens' values whatever top_logprobs is (to float rounding: b
  // starts from a's cells and decodes its prompt's last token alone)
  b.choices[0].logprobs.content.forEach((e, i) =>
    assert.ok(Math.abs(e.logprob - content[i].logprob) < 1e-3 * (1 + Math.abs(content[i].logprob)),
              `token ${i}: ${e.logprob} vs ${content[i].logprob}`));
});

test('chat: top_logprobs 0 and no logprobs', async () => {
  const c = client(S);
  const a = await c.chat.completions.create(chatReq({ top_logprobs: 0 }));
  checkContent(a.choices[0].logprobs.content, 0, true);
  assert.equal(a.choices[0].logprobs.content.length, a.usage.completion_tokens);
  const b = await c.chat.completions.create(chatReq({ logprobs: true, top_logprobs: undefined }));
  checkContent(b.choices[0].logprobs.content, 0, true);
  const d = await c.chat.completions.create(chatReq({ logprobs: undefined,
                                                      top_logprobs: undefined }));
  assert.equal(d.choices[0].logprobs, null);
  assert.equal(d.choices[0].message.content, a.choices[0].message.content);
});

test('chat: a stream\'s logprobs, chunk after chunk, are the whole answer\'s', async () => {
  const c = client(S);
  // (stories260K's greedy answer has " Anna" in its first tokens: the stop
  // string's tokens bring no text, their entries come with the last chunk)
  for (const extra of [{}, { stop: [' Anna'] }, { max_tokens: 40 }]) {
    const whole = await c.chat.completions.create(chatReq(extra));
    if (extra.stop && STORIES) {
      const ch = whole.choices[0];
      assert.equal(ch.finish_reason, 'stop');
      assert.ok(joined(ch.logprobs.content).length > Buffer.byteLength(ch.message.content));
    }
    const stream = await c.chat.completions.create(chatReq({ ...extra, stream: true,
      stream_options: { include_usage: true } }));
    const got = [];
    let text = '', usage = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      const ch = chunk.choices[0];
      if (!ch) continue;
      text += ch.delta?.content || '';
      if (ch.logprobs) got.push(...ch.logprobs.content);
      // a chunk with text carries its tokens
      if (ch.delta?.content) assert.ok(ch.logprobs?.content?.length > 0, JSON.stringify(chunk));
    }
    assert.equal(text, whole.choices[0].message.content, JSON.stringify(extra));
    sameContent(got, whole.choices[0].logprobs.content, JSON.stringify(extra));
    assert.equal(got.length, usage.completion_tokens);
  }
});

test('chat: sampled (temperature 1) tokens have logprobs too', async () => {
  const c = client(S);
  const a = await c.chat.completions.create(chatReq({ temperature: 1, seed: 7, max_tokens: 32 }));
  const content = checkContent(a.choices[0].logprobs.content, 5, false);
  assert.equal(content.length, a.usage.completion_tokens);
  // each sampled token's value is the one it has among the top ones
  for (const e of content) {
    const same = e.top_logprobs.find((t) => t.token === e.token &&
                                            t.bytes.join() === e.bytes.join());
    if (same) assert.equal(same.logprob, e.logprob);
  }
});

test('completions: the legacy logprobs shape, streamed and whole', async () => {
  const c = client(S);
  const req = { model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 20, ...GREEDY,
                logprobs: 3 };
  const a = await c.completions.create(req);
  const lp = a.choices[0].logprobs;
  const n = a.usage.completion_tokens;
  assert.equal(lp.tokens.length, n);
  assert.equal(lp.token_logprobs.length, n);
  assert.equal(lp.top_logprobs.length, n);
  assert.equal(lp.text_offset.length, n);
  assert.equal(lp.text_offset[0], 0);
  for (let i = 0; i < n; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    const tops = Object.entries(lp.top_logprobs[i]);
    assert.ok(tops.length >= 1 && tops.length <= 3);
    const best = Math.max(...tops.map(([, v]) => v));
    assert.equal(lp.token_logprobs[i], best, `token ${i} is greedy`);
    assert.equal(lp.top_logprobs[i][lp.tokens[i]], best);
    if (i > 0) assert.equal(lp.text_offset[i],
                            lp.text_offset[i - 1] + Buffer.byteLength(lp.tokens[i - 1]));
  }
  if (a.choices[0].finish_reason === 'length') assert.equal(lp.tokens.join(''), a.choices[0].text);
  const got = { tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] };
  for await (const chunk of await c.completions.create({ ...req, stream: true })) {
    const l = chunk.choices[0]?.logprobs;
    if (l) for (const k of Object.keys(got)) got[k].push(...l[k]);
  }
  assert.deepEqual(got.tokens, lp.tokens);
  assert.deepEqual(got.text_offset, lp.text_offset);
  got.token_logprobs.forEach((v, i) => assert.ok(Math.abs(v - lp.token_logprobs[i]) < 1e-4));
  assert.deepEqual(got.top_logprobs.map(Object.keys), lp.top_logprobs.map(Object.keys));
  const none = await c.completions.create({ ...req, logprobs: undefined });
  assert.equal(none.choices[0].logprobs, null);
  const zero = await c.completions.create({ ...req, logprobs: 0 });
  assert.deepEqual(zero.choices[0].logprobs.tokens, lp.tokens);
  assert.ok(zero.choices[0].logprobs.top_logprobs.every((o) => Object.keys(o).length === 0));
});

test('speculative decoding: the accepted drafts have the same logprobs', { skip: needStories },
  async () => {
  const spec = await startServer(['--spec', 'ngram']);
  const drafted = async () => Number(/^inferencecenter_spec_accepted_tokens_total (\d+)/m
    .exec(await (await fetch(`${spec.url}/metrics`)).text())[1]);
  const req = { model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 80, ...GREEDY,
                logprobs: 2, ignore_eos: true };
  const a = (await client(S).completions.create(req)).choices[0];
  const b = (await client(spec).completions.create(req)).choices[0];
  assert.ok(await drafted() > 0, 'no draft was accepted: the test tests nothing');
  // Rows of one batch or of several: the same values up to float rounding,
  // so the same tokens, except that rounding may flip a near-tie (see
  // tests/e2e/test_spec.py): then the answers part there, and only there.
  const x = a.logprobs, y = b.logprobs;
  let n = 0;
  while (n < x.tokens.length && x.tokens[n] === y.tokens[n]) n++;
  for (let i = 0; i < n; i++)
    assert.ok(Math.abs(x.token_logprobs[i] - y.token_logprobs[i]) < 1e-3,
              `token ${i}: ${x.token_logprobs[i]} vs ${y.token_logprobs[i]}`);
  if (n < x.tokens.length) {
    const [p0, p1] = Object.values(x.top_logprobs[n]);
    assert.ok(p1 !== undefined && Math.abs(p0 - p1) < 1e-3,
              `the answers part at token ${n}, which is no near-tie: ${JSON.stringify(x.top_logprobs[n])}`);
  }
  await stopServer(spec);
});

test('logprobs: wrong types and ranges are 400 naming the field', async () => {
  const c = client(S);
  const cases = [
    [{ logprobs: 'yes' }, 'logprobs', /true or false/],
    [{ logprobs: 1 }, 'logprobs', /true or false/],
    [{ logprobs: true, top_logprobs: 21 }, 'top_logprobs', /between 0 and 20/],
    [{ logprobs: true, top_logprobs: -1 }, 'top_logprobs', /between 0 and 20/],
    [{ logprobs: true, top_logprobs: 2.5 }, 'top_logprobs', /integer/],
    [{ top_logprobs: 2 }, 'top_logprobs', /requires 'logprobs'/],
    [{ logprobs: false, top_logprobs: 2 }, 'top_logprobs', /requires 'logprobs'/],
  ];
  for (const [extra, param, msg] of cases) {
    await assert.rejects(c.chat.completions.create({ model: MODEL_ID, messages: MSGS, ...extra }),
      (e) => {
        assert.equal(e.status, 400, JSON.stringify(extra));
        assert.equal(e.error.param, param, JSON.stringify(extra));
        assert.equal(e.error.type, 'invalid_request_error');
        assert.match(e.message, msg);
        return true;
      });
  }
  for (const lp of [6, -1, true, '2', 1.5]) {
    await assert.rejects(c.completions.create({ model: MODEL_ID, prompt: 'hi', logprobs: lp }),
      (e) => e.status === 400 && e.error.param === 'logprobs' && /between 0 and 5/.test(e.message));
  }
});

test('greedy logprobs equal the pinned llama-server\'s', { skip: needBoth }, async () => {
  const ours = client(S);
  for (const content of ['Tell me a story about a cat.', 'Lily and Ben']) {
    const req = chatReq({ messages: [{ role: 'user', content }], max_tokens: 32,
                          ignore_eos: true });
    const a = (await ours.chat.completions.create(req)).choices[0];
    const b = (await L.client.chat.completions.create(req)).choices[0];
    assert.equal(a.message.content, b.message.content, content);
    const x = a.logprobs.content, y = b.logprobs.content;
    assert.ok(Math.abs(x.length - y.length) <= 1 && Math.min(x.length, y.length) >= 16,
              `${x.length} vs ${y.length} tokens`);
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      assert.deepEqual(x[i].bytes, y[i].bytes, `${content}: token ${i}`);
      assert.ok(Math.abs(x[i].logprob - y[i].logprob) < 1e-3,
                `${content}: token ${i}: ${x[i].logprob} vs ${y[i].logprob}`);
      for (let k = 0; k < 5; k++) {
        assert.ok(Math.abs(x[i].top_logprobs[k].logprob - y[i].top_logprobs[k].logprob) < 1e-3,
                  `${content}: token ${i} top ${k}`);
      }
    }
  }
});

test('tools: a streamed call\'s logprobs, chunk after chunk, are the whole answer\'s',
  { skip: !existsSync(LLAMA3) && 'needs the generated vocab-llama-bpe model' }, async () => {
    // Llama 3.1's template (vocab-llama-bpe): the answer goes through the
    // template's parser, so chunks are the parser's deltas, not tokens.
    const s = await startServer([], LLAMA3);
    const c = client(s);
    const req = { model: 'vocab-llama-bpe', messages: [{ role: 'user', content: 'Weather?' }],
                  tools: [WEATHER], tool_choice: { type: 'function',
                                                   function: { name: 'get_weather' } },
                  temperature: 0, max_tokens: 60, logit_bias: { 90: 100 }, logprobs: true,
                  top_logprobs: 2 };
    const whole = await c.chat.completions.create(req);
    // constrained by the call's grammar: the sampled token need not be the top-1
    const content = checkContent(whole.choices[0].logprobs.content, 2, false);
    assert.equal(content.length, whole.usage.completion_tokens);
    const got = [];
    for await (const chunk of await c.chat.completions.create({ ...req, stream: true }))
      if (chunk.choices[0]?.logprobs) got.push(...chunk.choices[0].logprobs.content);
    sameContent(got, content, 'tool call');
    await stopServer(s);
  });

test('a piece of a UTF-8 character, forced by logit_bias: bytes:\\xNN and the raw logprob',
  { skip: needStories }, async () => {
    // 229 is stories260K's byte token <0xE2>: forced, the text is U+FFFD
    // repairs, the logprob the model's own (very unlikely), not the bias's.
    const c = client(S);
    const a = await c.chat.completions.create(chatReq({ max_tokens: 2, top_logprobs: 1,
                                                        logit_bias: { 229: 100 } }));
    for (const e of checkContent(a.choices[0].logprobs.content, 1, false)) {
      assert.equal(e.token, 'bytes:\\xe2');
      assert.deepEqual(e.bytes, [0xe2]);
      assert.ok(e.logprob < e.top_logprobs[0].logprob - 5, JSON.stringify(e));
      assert.notEqual(e.top_logprobs[0].token, e.token);
    }
    const b = await c.completions.create({ model: MODEL_ID, prompt: 'Once', max_tokens: 3,
                                           ...GREEDY, logprobs: 1, logit_bias: { 229: 100 } });
    assert.deepEqual(b.choices[0].logprobs.tokens, Array(3).fill('bytes:\\xe2'));
    assert.deepEqual(b.choices[0].logprobs.text_offset, [0, 1, 2]); // the tokens' bytes
  });
