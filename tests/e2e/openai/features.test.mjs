// End-to-end tests of the OpenAI API's sampling and output features with the
// official `openai` SDK: presence/frequency penalties and logit_bias,
// tools and response_format (logprobs: logprobs.test.mjs). Where llama-server implements the
// same thing (IC_LLAMA_SERVER on stories260K), the answers are compared
// with its answers to the same requests.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { STORIES, MODEL_ID, LLAMA_SERVER, startServer, stopServer, servers, client,
         startLlamaServer, GREEDY } from './helpers.mjs';

const needStories = !STORIES && 'needs stories260K';
const needBoth = (!STORIES || !LLAMA_SERVER) && 'needs stories260K and llama-server';

let S; // our server on the test model
let L = null; // llama-server on the same model, when there is one

before(async () => {
  S = await startServer();
  if (STORIES && LLAMA_SERVER) L = await startLlamaServer();
});
after(async () => {
  if (L) L.kill();
  for (const s of servers) await stopServer(s);
});

const text = async (c, req) => (await c.completions.create(req)).choices[0].text;

test('penalties and logit_bias: the same greedy text as llama-server', { skip: needBoth },
  async () => {
    const ours = client(S);
    const base = { model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 60, ...GREEDY };
    const plain = await text(ours, base);
    const variants = [
      { frequency_penalty: 2 },
      { presence_penalty: 2 },
      { presence_penalty: -2, frequency_penalty: -1 },
      { logit_bias: { 265: -100, 429: 5 } },
    ];
    for (const v of variants) {
      const req = { ...base, ...v };
      const a = await text(ours, req);
      assert.notEqual(a, plain, `${JSON.stringify(v)} changed nothing`);
      assert.equal(a, await text(L.client, req), JSON.stringify(v));
    }
  });

test('logit_bias: +100 forces a token, -100 bans it', { skip: needStories }, async () => {
  const c = client(S);
  const base = { model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 6, ...GREEDY };
  // 383 is " there" in stories260K's vocabulary: forced, it is all there is.
  assert.equal(await text(c, { ...base, logit_bias: { 383: 100 } }), ' there'.repeat(6));
  const plain = await text(c, { ...base, max_tokens: 3 });
  assert.ok(plain.includes(' there'), plain);
  const banned = await text(c, { ...base, max_tokens: 3, logit_bias: { 383: -100 } });
  assert.ok(!banned.includes(' there'), banned);
  // Streamed the same, and through chat.
  let streamed = '';
  for await (const ch of await c.completions.create({ ...base, stream: true,
                                                       logit_bias: { 383: 100 } }))
    streamed += ch.choices[0]?.text || '';
  assert.equal(streamed, ' there'.repeat(6));
  const chat = await c.chat.completions.create({ model: MODEL_ID, max_tokens: 4, ...GREEDY,
    messages: [{ role: 'user', content: 'hi' }], logit_bias: { 383: 100 } });
  assert.equal(chat.choices[0].message.content, ' there'.repeat(4));
});

test('penalties and logit_bias: wrong types and ranges are 400 naming the field', async () => {
  const c = client(S);
  const msgs = [{ role: 'user', content: 'hi' }];
  const cases = [
    [{ presence_penalty: 'high' }, 'presence_penalty', /number/],
    [{ frequency_penalty: 2.5 }, 'frequency_penalty', /between -2 and 2/],
    [{ logit_bias: [1, 2] }, 'logit_bias', /object/],
    [{ logit_bias: { ' there': 1 } }, 'logit_bias', /token ids/],
    [{ logit_bias: { 5: 'x' } }, 'logit_bias', /-100 to 100/],
    [{ logit_bias: { 5: 101 } }, 'logit_bias', /-100 to 100/],
    [{ logit_bias: { 99999999: 1 } }, 'logit_bias', /not in the model's vocabulary/],
  ];
  for (const [extra, param, msg] of cases) {
    for (const call of [
      () => c.chat.completions.create({ model: MODEL_ID, messages: msgs, ...extra }),
      () => c.completions.create({ model: MODEL_ID, prompt: 'hi', ...extra }),
    ]) {
      await assert.rejects(call(), (e) => {
        assert.equal(e.status, 400, JSON.stringify(extra));
        assert.equal(e.error.param, param, JSON.stringify(extra));
        assert.match(e.message, msg);
        return true;
      });
    }
  }
});
