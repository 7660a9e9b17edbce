// End-to-end tests of the OpenAI-compatible API: the real server binary
// (IC_BIN) on 127.0.0.1, driven by the official `openai` npm package, plus
// raw fetch() where the SDK hides what is under test (status codes, body
// limits, disconnects), and a differential run against the pinned
// llama-server (IC_LLAMA_SERVER) on stories260K. Helpers: helpers.mjs;
// sampling, tools and response_format: features.test.mjs; logprobs:
// logprobs.test.mjs.
//
// Environment (set by CTest): IC_BIN, IC_STORIES (optional), IC_TEST_MODELS,
// IC_LLAMA_SERVER (optional).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import OpenAI from 'openai';
import { BIN, STORIES, MODEL, MODEL_ID, LLAMA_SERVER, WORK, freePort, sleep, waitHealthy,
         servers, startServer, stopServer, client, GREEDY, post } from './helpers.mjs';

let S; // the shared open server

before(async () => { S = await startServer(); });
after(async () => { for (const s of servers) await stopServer(s); });

test('models: the served model, by list and by id', async () => {
  const c = client(S);
  const list = await c.models.list();
  assert.deepEqual(list.data.map((m) => m.id), [MODEL_ID]);
  const one = await c.models.retrieve(MODEL_ID);
  assert.equal(one.id, MODEL_ID);
  await assert.rejects(c.models.retrieve('no-such-model'), (e) => e.status === 404);
});

test('completions: greedy text, usage, finish_reason', { skip: !STORIES && 'needs stories260K' },
  async () => {
    const r = await client(S).completions.create({
      model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 12, ...GREEDY });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.choices[0].text, ', there was a little girl named Lily. She');
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.usage.completion_tokens, 12);
    assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 12);
  });

async function collectStream(stream) {
  let text = '', finish = null, usage = null, roles = 0, chunks = 0;
  for await (const ch of stream) {
    chunks++;
    if (ch.usage) usage = ch.usage;
    for (const c of ch.choices) {
      const piece = c.delta ? c.delta.content : c.text;
      if (piece) text += piece;
      if (c.delta && c.delta.role) roles++;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  return { text, finish, usage, roles, chunks };
}

test('chat: streamed text equals the whole answer; usage chunk when asked', async () => {
  const c = client(S);
  const req = { model: MODEL_ID, messages: [{ role: 'system', content: 'You tell stories.' },
                                             { role: 'user', content: 'Tell me one.' }],
                max_completion_tokens: 24, ...GREEDY };
  const whole = await c.chat.completions.create(req);
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  const streamed = await collectStream(await c.chat.completions.create({
    ...req, stream: true, stream_options: { include_usage: true } }));
  assert.equal(streamed.text, whole.choices[0].message.content);
  assert.equal(streamed.roles, 1);
  assert.equal(streamed.finish, whole.choices[0].finish_reason);
  // The same counts; the second request starts from the first's cells.
  for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens'])
    assert.equal(streamed.usage[k], whole.usage[k], k);
  assert.ok(streamed.usage.prompt_tokens_details.cached_tokens >=
            whole.usage.prompt_tokens_details.cached_tokens);
  assert.ok(streamed.chunks >= 3);
  const noUsage = await collectStream(await c.chat.completions.create({ ...req, stream: true }));
  assert.equal(noUsage.usage, null);
  assert.equal(noUsage.text, streamed.text);
});

test('completions: stop strings end the text before them', { skip: !STORIES && 'needs stories260K' },
  async () => {
    const c = client(S);
    const r = await c.completions.create({ model: MODEL_ID, prompt: 'Once upon a time',
                                           max_tokens: 30, stop: [' girl', 'zzz'], ...GREEDY });
    assert.equal(r.choices[0].text, ', there was a little');
    assert.equal(r.choices[0].finish_reason, 'stop');
    const s = await collectStream(await c.completions.create({
      model: MODEL_ID, prompt: 'Once upon a time', max_tokens: 30, stop: ' girl', stream: true,
      ...GREEDY }));
    assert.equal(s.text, ', there was a little');
  });

test('concurrent streams equal their solo answers', async () => {
  const c = client(S);
  const prompts = ['Once upon a time', 'The cat', 'One day, Tom', 'In the park'];
  const solo = [];
  for (const p of prompts) {
    solo.push((await c.completions.create({ model: MODEL_ID, prompt: p, max_tokens: 20,
                                            ...GREEDY })).choices[0].text);
  }
  const together = await Promise.all(prompts.map(async (p) => (await collectStream(
    await c.completions.create({ model: MODEL_ID, prompt: p, max_tokens: 20, stream: true,
                                 ...GREEDY }))).text));
  assert.deepEqual(together, solo);
});

test('errors have OpenAI\'s shape and the right status', async () => {
  const bad = await post(S, '/v1/chat/completions', '{"messages": [');
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.type, 'invalid_request_error');
  assert.ok(bad.json.error.message.includes('not valid JSON'));
  const c = client(S);
  const msgs = [{ role: 'user', content: 'hi' }];
  const cases = [
    [{ model: MODEL_ID, messages: msgs, temperature: 'hot' }, 400, 'temperature'],
    [{ model: MODEL_ID, messages: msgs, n: 2 }, 400, 'n'],
    [{ model: MODEL_ID, messages: [] }, 400, 'messages'],
    [{ model: 'gpt-4o', messages: msgs }, 404, 'model'],
  ];
  for (const [body, status, param] of cases) {
    await assert.rejects(c.chat.completions.create(body), (e) => {
      assert.equal(e.status, status, JSON.stringify(body));
      assert.equal(e.error.param, param);
      return true;
    });
  }
  await assert.rejects(c.completions.create({ model: MODEL_ID, prompt: ['a', 'b'] }),
    (e) => e.status === 400 && /list of prompts/.test(e.message));
  // Refused by the scheduler, after the request was accepted: still 400.
  await assert.rejects(c.completions.create({ model: MODEL_ID, prompt: '' }),
    (e) => e.status === 400 && e.error.param === 'prompt' && /empty/.test(e.message));
  const longPrompt = 'dog '.repeat(3000);
  await assert.rejects(c.completions.create({ model: MODEL_ID, prompt: longPrompt }),
    (e) => e.status === 400 && e.error.code === 'context_length_exceeded');
  const notFound = await post(S, '/v1/embeddings', '{}');
  assert.equal(notFound.status, 404);
  const big = await post(S, '/v1/chat/completions', 'x'.repeat(5 << 20));
  assert.equal(big.status, 413);
  const get = await fetch(`${S.url}/v1/chat/completions`);
  assert.equal(get.status, 405);
  assert.equal(get.headers.get('allow'), 'POST');
});

test('a client that disconnects mid-stream frees its work within a step', async () => {
  const ac = new AbortController();
  const r = await fetch(`${S.url}/v1/completions`, {
    method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 1000000, ignore_eos: true,
                           stream: true, ...GREEDY }) });
  const reader = r.body.getReader();
  await reader.read();
  const running = async () => {
    const m = await (await fetch(`${S.url}/metrics`)).text();
    return Number(/^inferencecenter_generations_running (\d+)/m.exec(m)[1]);
  };
  assert.equal(await running(), 1);
  ac.abort();
  const deadline = Date.now() + 5000;
  while (await running() > 0 && Date.now() < deadline) await sleep(20);
  assert.equal(await running(), 0);
  const m = await (await fetch(`${S.url}/metrics`)).text();
  assert.match(m, /^inferencecenter_queue_depth 0$/m);
});

test('API keys from the tokens file; limits per client', async () => {
  const tokens = join(WORK, 'tokens');
  const add = (name, ...extra) => execFileSync(BIN, ['token', 'add', name, '--tokens', tokens,
                                                     ...extra]).toString().trim();
  const alice = add('alice', '--max-sessions', '1');
  const s = await startServer(['--tokens', tokens]);
  await assert.rejects(client(s, 'wrong').models.list(), (e) => e.status === 401);
  const none = await fetch(`${s.url}/v1/models`);
  assert.equal(none.status, 401);
  const list = await client(s, alice).models.list();
  assert.equal(list.data[0].id, MODEL_ID);
  const viaHeader = await fetch(`${s.url}/v1/models`, { headers: { 'x-api-key': alice } });
  assert.equal(viaHeader.status, 200);
  // alice holds one request at a time: a second one gets 429 with Retry-After.
  const ac = new AbortController();
  const first = await fetch(`${s.url}/v1/completions`, {
    method: 'POST', signal: ac.signal,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${alice}` },
    body: JSON.stringify({ prompt: 'Once', max_tokens: 1000000, ignore_eos: true, stream: true }) });
  await first.body.getReader().read();
  await assert.rejects(client(s, alice).completions.create({ prompt: 'x', max_tokens: 2 }),
    (e) => e.status === 429 && e.headers.get('retry-after') === '1');
  ac.abort();
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      await client(s, alice).completions.create({ prompt: 'x', max_tokens: 2 });
      break;
    } catch (e) {
      if (e.status !== 429 || Date.now() > deadline) throw e;
      await sleep(50);
    }
  }
});

test('same greedy text as the pinned llama-server', { skip: (!STORIES || !LLAMA_SERVER) &&
    'needs stories260K and llama-server' }, async () => {
  const port = await freePort();
  const proc = spawn(LLAMA_SERVER, ['-m', MODEL, '--port', String(port), '-t', '1', '-c', '2048',
                                    '--jinja'], { stdio: 'ignore' });
  try {
    await waitHealthy(port, proc, 'llama-server');
    const theirs = new OpenAI({ apiKey: 'x', baseURL: `http://127.0.0.1:${port}/v1`,
                                maxRetries: 0 });
    const ours = client(S);
    for (const prompt of ['Once upon a time', 'Lily and Ben', 'The sun was']) {
      const req = { model: MODEL_ID, prompt, max_tokens: 32, ...GREEDY };
      const a = (await ours.completions.create(req)).choices[0].text;
      const b = (await theirs.completions.create(req)).choices[0].text;
      assert.equal(a, b, prompt);
    }
  } finally {
    proc.kill('SIGTERM');
  }
});

test('prompt cache: a 5-turn chat decodes only each turn\'s new tokens, answers as fresh',
  async () => {
    const fresh = await startServer(['--prompt-cache', '0']);
    const cached = client(S), plain = client(fresh);
    const msgs = [{ role: 'system', content: 'You are a storyteller who likes cats.' }];
    const users = ['Tell me about a cat.', 'What was its name?', 'Where did it live?',
                   'Did it have friends?', 'How does the story end?'];
    let prev = null;
    for (let turn = 0; turn < users.length; turn++) {
      msgs.push({ role: 'user', content: users[turn] });
      const req = { model: MODEL_ID, messages: msgs, max_tokens: 16, ...GREEDY };
      const a = await cached.chat.completions.create(req);
      const b = await plain.chat.completions.create(req);
      assert.equal(a.choices[0].message.content, b.choices[0].message.content, `turn ${turn}`);
      assert.equal(a.usage.prompt_tokens, b.usage.prompt_tokens);
      assert.equal(b.usage.prompt_tokens_details.cached_tokens, 0);
      const hit = a.usage.prompt_tokens_details.cached_tokens;
      if (turn === 0) {
        // At most the start it shares with an earlier test's request (the
        // template's header, copied from that session's cells).
        assert.ok(hit < a.usage.prompt_tokens - 8, `turn 0: ${hit} cached`);
      } else {
        // The whole previous prompt (and its answer) came from the cache: what
        // is decoded is the answer's end of turn and the new user message.
        assert.ok(hit >= prev.prompt_tokens,
          `turn ${turn}: ${hit} cached, the previous prompt had ${prev.prompt_tokens}`);
        assert.ok(a.usage.prompt_tokens - hit < a.usage.prompt_tokens - prev.prompt_tokens);
      }
      prev = a.usage;
      msgs.push({ role: 'assistant', content: a.choices[0].message.content });
    }
    const m = await (await fetch(`${S.url}/metrics`)).text();
    assert.match(m, /^inferencecenter_prompt_cache_hit_tokens_total [1-9]\d*$/m);
    assert.match(m, /^inferencecenter_http_requests_total\{route="\/v1\/chat\/completions",status="200"\} [1-9]/m);
  });

test('a new conversation starts from the cells of another with the same start', async () => {
  // Two conversations share a long system prompt but not their text: the
  // second copies the first's cells of the shared start (its own session,
  // not a takeover) and answers as a fresh server does. With
  // --prompt-cache-isolation client only the same client's cells are lent.
  const tokens = join(WORK, 'tokens-lend');
  const add = (name) => execFileSync(BIN, ['token', 'add', name, '--tokens', tokens])
    .toString().trim();
  const alice = add('alice'), bob = add('bob');
  const system = 'You are a storyteller. Every story has a cat, a dog and a small red ball, ' +
                 'and it ends well.';
  const ask = (c, user) => c.chat.completions.create({
    model: MODEL_ID, max_tokens: 12, ...GREEDY,
    messages: [{ role: 'system', content: system }, { role: 'user', content: user }] });
  const fresh = await startServer(['--prompt-cache', '0']);
  const shared = await startServer(['--tokens', tokens]);
  const isolated = await startServer(['--tokens', tokens, '--prompt-cache-isolation', 'client']);
  try {
    const first = await ask(client(shared, alice), 'Tell me about the cat.');
    assert.equal(first.usage.prompt_tokens_details.cached_tokens, 0);
    const second = await ask(client(shared, bob), 'Who found the ball?');
    const lent = second.usage.prompt_tokens_details.cached_tokens;
    assert.ok(lent >= 16 && lent < second.usage.prompt_tokens,
              `${lent} of ${second.usage.prompt_tokens} prompt tokens lent`);
    const plain = await ask(client(fresh), 'Who found the ball?');
    assert.equal(plain.usage.prompt_tokens_details.cached_tokens, 0);
    assert.equal(second.choices[0].message.content, plain.choices[0].message.content);
    assert.equal(second.usage.prompt_tokens, plain.usage.prompt_tokens);

    await ask(client(isolated, alice), 'Tell me about the cat.');
    const other = await ask(client(isolated, bob), 'Who found the ball?');
    assert.equal(other.usage.prompt_tokens_details.cached_tokens, 0, 'another client: none');
    const own = await ask(client(isolated, alice), 'Who found the ball?');
    assert.ok(own.usage.prompt_tokens_details.cached_tokens >= 16, 'the same client: lent');
    assert.equal(own.choices[0].message.content, plain.choices[0].message.content);
  } finally {
    for (const s of [fresh, shared, isolated]) await stopServer(s);
  }
});

test('prompt cache entries give way: a full server closes one and serves, not 429', async () => {
  const s = await startServer(['--max-sessions', '2', '--prompt-cache', '1']);
  const c = client(s);
  await c.completions.create({ prompt: 'Once upon a time', max_tokens: 4, ...GREEDY });
  const ac = new AbortController();
  const long = await fetch(`${s.url}/v1/completions`, {
    method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'The cat', max_tokens: 1000000, ignore_eos: true,
                           stream: true }) });
  await long.body.getReader().read();
  // Two sessions in use (one cached, one running): the next request waits
  // for the cached one to close and is then served.
  const r = await c.completions.create({ prompt: 'A dog', max_tokens: 4, ...GREEDY });
  assert.equal(r.choices[0].finish_reason, 'length');
  ac.abort();
});

test('closed-loop clients on every session never get 429 while cache entries close', async () => {
  // 8 conversations on 8 sessions with 4 cache entries: each turn evicts
  // an entry another request may also need; a request that finds no entry
  // left to close waits for one still closing instead of a 429.
  const s = await startServer(['--max-sessions', '8', '--prompt-cache', '4']);
  const c = client(s);
  const convo = async (k) => {
    let prompt = `Story ${k}: once upon a time`;
    for (let turn = 0; turn < 10; turn++) {
      const r = await c.completions.create({ prompt, max_tokens: 3, ignore_eos: true, ...GREEDY });
      assert.equal(r.choices[0].finish_reason, 'length');
      prompt += r.choices[0].text + ' and then';
    }
  };
  await Promise.all([...Array(8).keys()].map(convo));
});
