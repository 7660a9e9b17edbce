// End-to-end tests of the chat layer through the OpenAI API with the
// official `openai` SDK and its own helpers (chat.completions.parse,
// .stream, .runTools): response_format (json_object, json_schema, and a
// schema that does not compile), tools and tool_choice with the model's own
// template (Qwen 2.5's Hermes-style <tool_call>, Llama 3.1's bare JSON),
// streamed delta.tool_calls, finish_reason "tool_calls", and role "tool"
// messages in the follow-up. The models have random weights: only a
// grammar makes their output well-formed, so every well-formed answer here
// is the constraint at work.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { TEST_MODELS, servers, startServer, stopServer, client } from './helpers.mjs';

const QWEN = join(TEST_MODELS, 'vocab-qwen2.gguf');
const LLAMA3 = join(TEST_MODELS, 'vocab-llama-bpe.gguf');
const TINY = join(TEST_MODELS, 'tiny-f32.gguf');
const needModels = !(existsSync(QWEN) && existsSync(LLAMA3) && existsSync(TINY)) &&
  'needs the generated vocab-* models (ctest -R make_test_models)';

const id = (path) => path.split('/').pop().replace(/\.gguf$/, '');
let Q, L, T; // servers on Qwen 2.5, Llama 3.1 and the template-less tiny model

before(async () => {
  if (needModels) return;
  [Q, L, T] = await Promise.all([startServer([], QWEN), startServer([], LLAMA3),
                                 startServer([], TINY)]);
});
after(async () => { for (const s of servers) await stopServer(s); });

const WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather', description: 'The weather in a city', strict: true,
    parameters: {
      type: 'object', additionalProperties: false, required: ['city', 'days'],
      properties: { city: { type: 'string', maxLength: 10 },
                    days: { type: 'integer', minimum: 1, maximum: 7 } },
    },
  },
};
const TIME = {
  type: 'function',
  function: {
    name: 'get_time', description: 'The time in a zone', strict: true,
    parameters: { type: 'object', additionalProperties: false, required: ['zone'],
                  properties: { zone: { type: 'string', enum: ['UTC', 'CET'] } } },
  },
};

function validWeatherArgs(a) {
  return a && typeof a === 'object' && Object.keys(a).sort().join() === 'city,days' &&
    typeof a.city === 'string' && [...a.city].length <= 10 &&
    Number.isInteger(a.days) && a.days >= 1 && a.days <= 7;
}

const PERSON = {
  type: 'object', additionalProperties: false, required: ['name', 'age', 'pets'],
  properties: {
    name: { type: 'string', maxLength: 12 },
    age: { type: 'integer', minimum: 0, maximum: 150 },
    pets: { type: 'array', maxItems: 3, items: { type: 'string', enum: ['cat', 'dog'] } },
  },
};

function personProblem(p) {
  if (!p || typeof p !== 'object' || Array.isArray(p)) return 'not an object';
  if (Object.keys(p).sort().join() !== 'age,name,pets') return `keys ${Object.keys(p)}`;
  if (typeof p.name !== 'string' || [...p.name].length > 12) return 'name';
  if (!Number.isInteger(p.age) || p.age < 0 || p.age > 150) return 'age';
  if (!Array.isArray(p.pets) || p.pets.length > 3 ||
      !p.pets.every((x) => x === 'cat' || x === 'dog')) return 'pets';
  return null;
}

const ask = (content) => [{ role: 'user', content }];

test('response_format json_schema: parse() gives objects that validate, at temperature 1',
  { skip: needModels }, async () => {
    for (const s of [T, Q]) {
      const c = client(s);
      for (let seed = 1; seed <= 8; seed++) {
        const r = await c.chat.completions.parse({
          model: id(s === T ? TINY : QWEN), messages: ask('Describe a person.'),
          temperature: 1, seed, max_tokens: 300,
          response_format: { type: 'json_schema',
                             json_schema: { name: 'person', strict: true, schema: PERSON } },
        });
        const m = r.choices[0].message;
        assert.equal(r.choices[0].finish_reason, 'stop', m.content);
        assert.equal(personProblem(m.parsed), null, m.content);
      }
    }
  });

test('response_format json_schema: streamed text equals the whole answer (greedy)',
  { skip: needModels }, async () => {
    const c = client(Q);
    const req = { model: id(QWEN), messages: ask('A person?'), temperature: 0, max_tokens: 300,
                  response_format: { type: 'json_schema',
                                     json_schema: { name: 'person', schema: PERSON } } };
    const whole = (await c.chat.completions.create(req)).choices[0].message.content;
    const stream = c.chat.completions.stream(req);
    const final = await stream.finalChatCompletion();
    assert.equal(final.choices[0].message.content, whole);
    assert.equal(personProblem(JSON.parse(whole)), null, whole);
  });

test('response_format json_object: the answer is a JSON object', { skip: needModels },
  async () => {
    const c = client(T);
    let finished = 0;
    for (let seed = 1; seed <= 6; seed++) {
      const r = await c.chat.completions.create({
        model: id(TINY), messages: ask('JSON please'), seed, temperature: 1, max_tokens: 200,
        response_format: { type: 'json_object' } });
      const { content } = r.choices[0].message;
      assert.match(content, /^\s*\{/);
      if (r.choices[0].finish_reason !== 'stop') continue;
      finished++;
      const v = JSON.parse(content);
      assert.ok(v && typeof v === 'object' && !Array.isArray(v), content);
    }
    assert.ok(finished > 0, 'no answer ended within 200 tokens');
  });

test('response_format: a schema that does not compile is 400 naming it, streamed or not',
  { skip: needModels }, async () => {
    const c = client(Q);
    const bad = [
      [{ type: 'object', properties: { a: { $ref: '#/definitions/missing' } } }, /missing|ref/i],
      // (llama.cpp's converter accepts any string for an unanchored pattern)
      [{ type: 'object', properties: { a: { type: 'string', pattern: '[a-z]+' } } }, /not anchored/],
      [{ type: 'object', properties: { a: { type: 'string', pattern: '^($' } } }, /Invalid pattern/],
      [{ type: 'frobnicate' }, /Unrecognized schema/],
    ];
    for (const [schema, why] of bad) {
      for (const stream of [false, true]) {
        await assert.rejects(c.chat.completions.create({
          model: id(QWEN), messages: ask('x'), stream, max_tokens: 5,
          response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } }),
        (e) => {
          assert.equal(e.status, 400, JSON.stringify(schema));
          assert.equal(e.error.param, 'response_format');
          assert.match(e.message, /does not compile/);
          assert.match(e.message, why);
          return true;
        });
      }
    }
    // The server still answers.
    const ok = await c.chat.completions.create({ model: id(QWEN), messages: ask('x'),
                                                 max_tokens: 2 });
    assert.equal(ok.choices.length, 1);
  });

// tool_choice "required" in llama.cpp's grammars lets the model write text
// before the call (until "{" for Llama 3.1, "<tool_call>" for Qwen); a
// random-weight model rarely gets there, so the Llama 3.1 tests push "{"
// (its token 90) with a logit bias. Where "{" is not allowed (after the
// call opens) the grammar still decides every token: the arguments are the
// grammar's work at temperature 1.
const OPEN_CALL = { 90: 100 };

for (const [name, path, server] of [['Llama 3.1', LLAMA3, () => L]]) {
  test(`tools (${name}): tool_choice required gives a call that parses, finish tool_calls`,
    { skip: needModels }, async () => {
      const c = client(server());
      for (let seed = 1; seed <= 4; seed++) {
        const r = await c.chat.completions.parse({
          model: id(path), messages: ask('Weather in Paris?'), tools: [WEATHER, TIME],
          tool_choice: 'required', temperature: 1, seed, max_tokens: 200,
          logit_bias: OPEN_CALL });
        const ch = r.choices[0];
        assert.equal(ch.finish_reason, 'tool_calls', JSON.stringify(ch.message));
        assert.ok(ch.message.tool_calls.length >= 1);
        for (const call of ch.message.tool_calls) {
          assert.equal(call.type, 'function');
          assert.ok(call.id && typeof call.id === 'string');
          assert.ok(['get_weather', 'get_time'].includes(call.function.name), call.function.name);
          assert.deepEqual(call.function.parsed_arguments, JSON.parse(call.function.arguments));
          if (call.function.name === 'get_weather')
            assert.ok(validWeatherArgs(call.function.parsed_arguments), call.function.arguments);
          else
            assert.ok(['UTC', 'CET'].includes(call.function.parsed_arguments.zone));
        }
      }
    });

  test(`tools (${name}): a named tool_choice calls that function; streamed deltas add up`,
    { skip: needModels }, async () => {
      const c = client(server());
      const req = { model: id(path), messages: ask('Weather?'), tools: [WEATHER, TIME],
                    tool_choice: { type: 'function', function: { name: 'get_weather' } },
                    temperature: 0, max_tokens: 200, logit_bias: OPEN_CALL };
      const whole = await c.chat.completions.create(req);
      const calls = whole.choices[0].message.tool_calls;
      assert.equal(whole.choices[0].finish_reason, 'tool_calls');
      assert.equal(calls[0].function.name, 'get_weather');
      assert.ok(validWeatherArgs(JSON.parse(calls[0].function.arguments)));
      // Streamed: the SDK's stream helper puts the deltas back together.
      let argEvents = 0, chunksWithCalls = 0;
      const stream = c.chat.completions.stream(req);
      stream.on('tool_calls.function.arguments.done', (ev) => {
        argEvents++;
        assert.ok(validWeatherArgs(ev.parsed_arguments), ev.arguments);
      });
      stream.on('chunk', (ch) => { if (ch.choices[0]?.delta?.tool_calls) chunksWithCalls++; });
      const final = await stream.finalChatCompletion();
      const sc = final.choices[0];
      assert.equal(sc.finish_reason, 'tool_calls');
      assert.equal(sc.message.tool_calls.length, calls.length);
      sc.message.tool_calls.forEach((t, i) => {
        assert.equal(t.function.name, calls[i].function.name);
        assert.equal(t.function.arguments, calls[i].function.arguments);
      });
      assert.equal(argEvents, calls.length);
      assert.ok(chunksWithCalls >= 1);
      // Raw stream: the first delta of a call names it, later ones add arguments.
      const raw = await c.chat.completions.create({ ...req, stream: true });
      const seen = new Map();
      for await (const ch of raw) {
        for (const t of ch.choices[0]?.delta?.tool_calls || []) {
          if (!seen.has(t.index)) {
            assert.ok(t.id && t.function.name, JSON.stringify(t));
            seen.set(t.index, '');
          } else {
            assert.equal(t.function.name, undefined);
          }
          seen.set(t.index, seen.get(t.index) + (t.function.arguments || ''));
        }
      }
      assert.equal(seen.get(0), calls[0].function.arguments);
    });

  test(`tools (${name}): role tool messages reach the template in the follow-up`,
    { skip: needModels }, async () => {
      const c = client(server());
      const first = await c.chat.completions.create({
        model: id(path), messages: ask('Weather in Oslo?'), tools: [WEATHER],
        tool_choice: 'required', temperature: 0, max_tokens: 200, logit_bias: OPEN_CALL });
      const msg = first.choices[0].message;
      const call = msg.tool_calls[0];
      const follow = (result) => c.chat.completions.create({
        model: id(path), tools: [WEATHER], tool_choice: 'none', temperature: 0, max_tokens: 8,
        messages: [...ask('Weather in Oslo?'), msg,
                   { role: 'tool', tool_call_id: call.id, content: result }] });
      const short = await follow('sunny');
      const long = await follow('sunny, 21 degrees, light wind from the south west, no rain');
      assert.equal(short.choices[0].message.tool_calls, undefined);
      assert.equal(typeof short.choices[0].message.content, 'string');
      assert.ok(long.usage.prompt_tokens > short.usage.prompt_tokens + 5,
                `${long.usage.prompt_tokens} vs ${short.usage.prompt_tokens}`);
      // A tool message without tool_call_id is refused by name.
      await assert.rejects(c.chat.completions.create({
        model: id(path), messages: [...ask('x'), msg, { role: 'tool', content: 'y' }] }),
      (e) => e.status === 400 && /tool_call_id/.test(e.error.param));
    });
}

test('tools: runTools() runs the function and sends its result back as a tool message',
  { skip: needModels }, async () => {
    const c = client(L);
    const got = [];
    const runner = c.chat.completions.runTools({
      model: id(LLAMA3), messages: ask('Weather in Rome?'), tool_choice: 'required',
      temperature: 0, max_tokens: 200, logit_bias: OPEN_CALL,
      tools: [{ type: 'function', function: {
        name: 'get_weather', parameters: WEATHER.function.parameters, parse: JSON.parse,
        function: (args) => { got.push(args); return { sky: 'clear', celsius: 20 }; } } }],
    }, { maxChatCompletions: 2 });
    await runner.done();
    const sent = runner.messages;
    assert.equal(got.length, 2, JSON.stringify(sent));
    for (const a of got) assert.ok(validWeatherArgs(a), JSON.stringify(a));
    const toolMsgs = sent.filter((m) => m.role === 'tool');
    assert.equal(toolMsgs.length, 2);
    assert.equal(JSON.parse(toolMsgs[0].content).sky, 'clear');
  });

test('tools (Qwen 2.5): an earlier call and its tool result render into the prompt',
  { skip: needModels }, async () => {
    const c = client(Q);
    const call = { id: 'call_1', type: 'function',
                   function: { name: 'get_weather', arguments: '{"city":"Oslo","days":1}' } };
    const follow = (result, extra = {}) => c.chat.completions.create({
      model: id(QWEN), tools: [WEATHER], temperature: 0, max_tokens: 4, ...extra,
      messages: [...ask('Weather in Oslo?'), { role: 'assistant', content: null, tool_calls: [call] },
                 { role: 'tool', tool_call_id: 'call_1', content: result }] });
    const short = await follow('sunny');
    const long = await follow('sunny, 21 degrees, light wind from the south west, no rain');
    assert.ok(long.usage.prompt_tokens > short.usage.prompt_tokens + 5);
    // The same conversation with the call's arguments changed renders differently.
    const other = await c.chat.completions.create({
      model: id(QWEN), tools: [WEATHER], temperature: 0, max_tokens: 4,
      messages: [...ask('Weather in Oslo?'), { role: 'assistant', content: null, tool_calls: [
        { ...call, function: { ...call.function,
                               arguments: '{"city":"Oslo, Norway, Europe","days":7}' } }] },
                 { role: 'tool', tool_call_id: 'call_1', content: 'sunny' }] });
    assert.ok(other.usage.prompt_tokens > short.usage.prompt_tokens);
  });

test('tools: tool_choice auto and none answer; a tool_choice naming no tool is 400',
  { skip: needModels }, async () => {
    const c = client(Q);
    for (const tool_choice of ['auto', 'none']) {
      const r = await c.chat.completions.create({
        model: id(QWEN), messages: ask('hi'), tools: [WEATHER], tool_choice, max_tokens: 20,
        temperature: 0 });
      assert.ok(['stop', 'length', 'tool_calls'].includes(r.choices[0].finish_reason));
      if (tool_choice === 'none') assert.equal(r.choices[0].message.tool_calls, undefined);
    }
    await assert.rejects(c.chat.completions.create({
      model: id(QWEN), messages: ask('hi'), tools: [WEATHER],
      tool_choice: { type: 'function', function: { name: 'nope' } } }),
    (e) => e.status === 400 && e.error.param === 'tool_choice' && /nope/.test(e.message));
    await assert.rejects(c.chat.completions.create({
      model: id(QWEN), messages: ask('hi'), tools: [WEATHER], parallel_tool_calls: 'no' }),
    (e) => e.status === 400 && e.error.param === 'parallel_tool_calls');
    const one = await c.chat.completions.create({
      model: id(QWEN), messages: ask('hi'), tools: [WEATHER], parallel_tool_calls: false,
      max_tokens: 4, temperature: 0 });
    assert.equal(one.choices.length, 1);
    await assert.rejects(c.chat.completions.create({
      model: id(QWEN), messages: ask('hi'), tools: [WEATHER], tool_choice: 'required',
      response_format: { type: 'json_object' } }),
    (e) => e.status === 400 && e.error.param === 'response_format');
  });
