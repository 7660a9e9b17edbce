// Shared by the OpenAI API test files: the server binary (IC_BIN) and the
// pinned llama-server (IC_LLAMA_SERVER) on 127.0.0.1, and SDK clients.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import OpenAI from 'openai';

export const BIN = process.env.IC_BIN;
export const STORIES = process.env.IC_STORIES && existsSync(process.env.IC_STORIES)
  ? process.env.IC_STORIES : null;
export const MODEL = STORIES || join(process.env.IC_TEST_MODELS || 'build/test-models', 'tiny-f32.gguf');
export const MODEL_ID = MODEL.split('/').pop().replace(/\.gguf$/, '');
export const LLAMA_SERVER = process.env.IC_LLAMA_SERVER;
export const WORK = mkdtempSync(join(tmpdir(), 'ic-openai-'));

export function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitHealthy(port, proc, what) {
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`${what} exited ${proc.exitCode}`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`);
      if (r.status === 200) return;
    } catch { /* not yet listening */ }
    await sleep(50);
  }
  throw new Error(`${what} not healthy in 60 s`);
}

export const servers = [];

export const TEST_MODELS = process.env.IC_TEST_MODELS || 'build/test-models';

export async function startServer(args = [], model = MODEL) {
  const port = await freePort();
  const log = [];
  const proc = spawn(BIN, ['serve', '--model', model, '--port', String(port), '--threads', '1',
                           ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout.on('data', (d) => log.push(d));
  proc.stderr.on('data', (d) => log.push(d));
  const s = { port, proc, log: () => Buffer.concat(log).toString(),
              url: `http://127.0.0.1:${port}` };
  servers.push(s);
  await waitHealthy(port, proc, 'inferencecenter');
  return s;
}

export async function stopServer(s) {
  if (s.proc.exitCode === null) {
    const done = new Promise((r) => s.proc.once('exit', r));
    s.proc.kill('SIGTERM');
    await done;
  }
  const out = s.log();
  assert.equal(s.proc.exitCode, 0, `server exited ${s.proc.exitCode}:\n${out}`);
  assert.ok(!/AddressSanitizer|runtime error:|LeakSanitizer/.test(out), out);
}

export function client(s, apiKey = 'none', opts = {}) {
  return new OpenAI({ apiKey, baseURL: `${s.url}/v1`, maxRetries: 0, timeout: 60000, ...opts });
}

export const GREEDY = { temperature: 0 };

/* The pinned llama-server on the same model; call kill() when done. */
export async function startLlamaServer(args = []) {
  const port = await freePort();
  const proc = spawn(LLAMA_SERVER, ['-m', MODEL, '--port', String(port), '-t', '1', '-c', '2048',
                                    '--jinja', ...args], { stdio: 'ignore' });
  await waitHealthy(port, proc, 'llama-server');
  return { port, proc, url: `http://127.0.0.1:${port}`,
           client: new OpenAI({ apiKey: 'x', baseURL: `http://127.0.0.1:${port}/v1`,
                                maxRetries: 0 }),
           kill: () => proc.kill('SIGTERM') };
}

export async function post(s, path, body, headers = {}) {
  const r = await fetch(`${s.url}${path}`, { method: 'POST', body,
    headers: { 'content-type': 'application/json', ...headers } });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: r.status, json, text, headers: r.headers };
}
