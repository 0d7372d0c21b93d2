// An independent load client for the realtime fan-out: Node's own WebSocket and fetch (undici),
// sharing no code with the node or with dialog-events-load. It drives the same load as
// `dialog-events-load fanout` (subscribers over graphql-transport-ws, one activity per change at a
// fixed rate, commit times read back from the poll API) and writes the same JSON figures.
//
//   node --experimental-websocket load-tests/node/fanout.mjs --target http://127.0.0.1:8080 \
//     --owner-token T --admin-token T --server-pid PID --subscribers 2000 --dialogs 10 \
//     --rate 20 --seconds 10 --out result.json
import { readFileSync, writeFileSync } from 'node:fs';

const RESOURCE = 'urn:altinn:resource:load-test';
const ORG = '991825827';
const PERSON = '08895699684';
const TICKS = 100; // USER_HZ: /proc/PID/stat counts CPU in 1/100 s on Linux.

function args() {
  const a = process.argv.slice(2);
  const o = {};
  for (let i = 0; i < a.length; i += 2) o[a[i].replace(/^--/, '')] = a[i + 1];
  for (const k of ['target', 'owner-token', 'admin-token', 'subscribers', 'dialogs', 'rate', 'seconds']) {
    if (o[k] === undefined) throw new Error(`--${k} is required`);
  }
  return {
    target: o.target,
    owner: o['owner-token'],
    admin: o['admin-token'],
    pid: o['server-pid'],
    subscribers: Number(o.subscribers),
    dialogs: Number(o.dialogs),
    rate: Number(o.rate),
    seconds: Number(o.seconds),
    out: o.out,
  };
}

const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function cpuSeconds(pid) {
  if (!pid) return null;
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICKS; // utime, stime
}

async function call(cfg, method, path, token, body) {
  const res = await fetch(cfg.target + path, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

async function setup(cfg) {
  const r = await call(cfg, 'PUT', `/admin/v1/resources/${RESOURCE}`, cfg.admin,
    { owner: `urn:altinn:organization:identifier-no:${ORG}` });
  if (r.status !== 200) throw new Error(`registering the resource failed: ${r.status} ${r.text}`);
  const ids = [];
  while (ids.length < cfg.dialogs) {
    const batch = Math.min(32, cfg.dialogs - ids.length);
    const made = await Promise.all(Array.from({ length: batch }, async () => {
      const c = await call(cfg, 'POST', '/api/v1/serviceowner/dialogs', cfg.owner, {
        serviceResource: RESOURCE,
        party: `urn:altinn:person:identifier-no:${PERSON}`,
        status: 'InProgress',
        content: { title: [{ value: 'load', languageCode: 'nb' }] },
      });
      if (c.status !== 201) throw new Error(`creating a dialog failed: ${c.status} ${c.text}`);
      return c.json;
    }));
    ids.push(...made);
  }
  const tokens = [];
  for (const id of ids) {
    const d = await call(cfg, 'GET', `/api/v1/serviceowner/dialogs/${id}`, cfg.owner);
    tokens.push(d.json.dialogToken);
  }
  return { ids, tokens };
}

// One subscriber: resolves once its subscription is sent; `got` collects [sequence, receive time].
function subscribe(cfg, dialog, token) {
  const url = cfg.target.replace(/^http/, 'ws') + '/graphql';
  const sub = { got: [], socket: null };
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, 'graphql-transport-ws');
    sub.socket = ws;
    ws.onopen = () => ws.send(JSON.stringify({
      type: 'connection_init', payload: { Authorization: `Bearer ${token}` },
    }));
    ws.onerror = (e) => reject(new Error(`websocket: ${e.message ?? 'error'}`));
    ws.onmessage = (m) => {
      const at = now();
      const msg = JSON.parse(m.data);
      if (msg.type === 'next') {
        sub.got.push([msg.payload.data.dialogEvents.sequence, at]);
      } else if (msg.type === 'ping') {
        ws.send('{"type":"pong"}');
      } else if (msg.type === 'connection_ack') {
        ws.send(JSON.stringify({
          id: '1', type: 'subscribe', payload: {
            query: 'subscription ($id: UUID!) { dialogEvents(dialogId: $id) { sequence } }',
            variables: { id: dialog },
          },
        }));
        resolve(sub);
      }
    };
  });
}

function percentiles(samples) {
  if (samples.length === 0) return null;
  samples.sort((a, b) => a - b);
  const at = (q) => samples[Math.round((samples.length - 1) * q)];
  return {
    count: samples.length, p50_ms: at(0.5), p90_ms: at(0.9), p99_ms: at(0.99),
    p999_ms: at(0.999), max_ms: samples[samples.length - 1],
  };
}

async function main() {
  const cfg = args();
  const { ids, tokens } = await setup(cfg);
  const connectStarted = now();
  const subs = [];
  for (let i = 0; i < cfg.subscribers; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(i + 100, cfg.subscribers); j++) {
      const d = j % ids.length;
      batch.push(subscribe(cfg, ids[d], tokens[d]).then((s) => Object.assign(s, { d })));
    }
    subs.push(...await Promise.all(batch));
  }
  const connectSeconds = (now() - connectStarted) / 1000;
  await sleep(500);

  const total = cfg.rate * cfg.seconds;
  const expected = ids.map((_, d) => Math.floor((total + ids.length - 1 - d) / ids.length));
  const cpu0 = cpuSeconds(cfg.pid);
  const self0 = process.cpuUsage();
  const started = now();
  // The writer: one activity per change, each sent when due, whatever is still in flight.
  const writes = [];
  const interval = 1000 / cfg.rate;
  for (let n = 0; n < total; n++) {
    const due = started + (n + 1) * interval;
    const wait = due - now();
    if (wait > 1) await sleep(wait);
    writes.push(call(cfg, 'POST', `/api/v1/serviceowner/dialogs/${ids[n % ids.length]}/activities`,
      cfg.owner, { type: 'Information' }));
  }
  await Promise.all(writes);
  const deadline = now() + 30_000;
  while (now() < deadline && subs.some((s) => s.got.length < expected[s.d])) await sleep(20);
  const secs = (now() - started) / 1000;
  const cpu1 = cpuSeconds(cfg.pid);
  const self1 = process.cpuUsage(self0);
  for (const s of subs) s.socket.close();

  // Commit times from the poll API (the node's wall clock, same machine).
  const commit = new Map();
  let after = '0';
  for (;;) {
    const page = await call(cfg, 'GET',
      `/events/api/v1/events?resource=${RESOURCE}&after=${after}&size=1000`, cfg.owner);
    if (!Array.isArray(page.json) || page.json.length === 0) break;
    for (const e of page.json) {
      commit.set(`${e.resourceinstance} ${e.dialogsequence}`, Date.parse(e.time));
    }
    after = page.json[page.json.length - 1].id;
  }
  let frames = 0; let lost = 0; let outOfOrder = 0;
  const lat = [];
  for (const s of subs) {
    frames += s.got.length;
    lost += Math.max(0, expected[s.d] - s.got.length);
    for (let i = 1; i < s.got.length; i++) if (s.got[i][0] <= s.got[i - 1][0]) outOfOrder++;
    for (const [seq, at] of s.got) {
      // RFC 3339 times carry microseconds; Date.parse keeps milliseconds, so a latency may read
      // up to 1 ms high.
      const c = commit.get(`${ids[s.d]} ${seq}`);
      if (c !== undefined) lat.push(Math.max(0, at - c));
    }
  }
  const doc = {
    scenario: 'fanout-node',
    client: `node ${process.version} (WebSocket and fetch of undici)`,
    parameters: {
      target: cfg.target, subscribers: cfg.subscribers, dialogs: cfg.dialogs,
      rate: cfg.rate, seconds: cfg.seconds,
    },
    figures: {
      delivered_frames: frames,
      delivered_frames_per_second: frames / secs,
      lost,
      out_of_order: outOfOrder,
      latency_commit_to_receive: percentiles(lat),
      connect_seconds: connectSeconds,
      seconds: secs,
      client_cpu_seconds: (self1.user + self1.system) / 1e6,
      server_cpu_seconds: cpu0 === null ? null : cpu1 - cpu0,
    },
  };
  const text = JSON.stringify(doc, null, 2);
  if (cfg.out) writeFileSync(cfg.out, text);
  console.log(text);
  if (frames === 0) throw new Error('no frame was delivered');
  process.exit(0);
}

main().catch((e) => { console.error(e); process.exit(1); });
