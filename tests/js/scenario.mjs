// Drives the real centrifuge-js SDK (npm `centrifuge`, over the `ws` package) against a server and
// prints what happened as JSON lines on stdout, one object per line: {"event": "...", ...}.
// tests/test_sdk_js.py runs it and asserts on those lines.
//
//   node scenario.mjs --scenario NAME --url ws://127.0.0.1:PORT/connection/websocket \
//        [--token JWT] [--other-token JWT] [--channel CH] [--timeout MS] [--protocol json|protobuf]
// (AETHER_URL, AETHER_TOKEN, AETHER_OTHER_TOKEN may replace the flags.)
//
// Scenarios:
//   pubsub         subscription created before connect (connect + subscribe go out in one
//                  frame), publish + own publication, history, presence, presence_stats
//   recovery       subscribe, disconnect(), another client publishes, connect() again:
//                  the subscription is recovered with the missed publications
//   invalid-token  a token the server rejects: `disconnected` 3500 and no reconnect attempt
//   rpc            connect without a token, a Cookie header on the upgrade request (--cookie:
//                  the backend's connect proxy authenticates it), then `rpc` calls: one the
//                  backend answers, one it refuses
//   delta          a `delta: 'fossil'` subscription: five similar publications, exact, four as deltas
//
// --protocol protobuf runs the SDK's Protobuf build (`centrifuge/build/protobuf`, subprotocol
// `centrifuge-protobuf`): payloads are then bytes, so the scenarios publish JSON text as bytes and
// parse what they receive, and binary frames are recorded as "base64:..." strings.
//
// Every step has a deadline; a step that does not finish prints {"event":"step_timeout"} and the
// whole script exits non-zero after --timeout ms at the latest.

import { parseArgs } from 'node:util';
import WebSocket from 'ws';

const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string' },
    url: { type: 'string', default: process.env.AETHER_URL },
    token: { type: 'string', default: process.env.AETHER_TOKEN },
    'other-token': { type: 'string', default: process.env.AETHER_OTHER_TOKEN },
    channel: { type: 'string', default: 'js_chat' },
    timeout: { type: 'string', default: '20000' },
    cookie: { type: 'string', default: '' },
    protocol: { type: 'string', default: 'json' },
  },
});

const PROTOBUF = args.protocol === 'protobuf';
const { Centrifuge } = await import(PROTOBUF ? 'centrifuge/build/protobuf' : 'centrifuge');

// Payloads: JSON values in the JSON protocol, bytes (here: JSON text) in the Protobuf one.
function encode(value) {
  return PROTOBUF ? new TextEncoder().encode(JSON.stringify(value)) : value;
}

function decode(data) {
  if (!PROTOBUF || data === undefined || data === null) return data;
  return JSON.parse(new TextDecoder().decode(data));
}

const STEP_MS = 5000;

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

function fail(message) {
  emit('failed', { message });
  process.exit(1);
}

const overall = setTimeout(() => {
  emit('timeout', { after_ms: Number(args.timeout) });
  process.exit(3);
}, Number(args.timeout));

// A WebSocket class per client that records every socket it opens and every frame sent on it, so
// the scenario can show exactly what the SDK put on the wire.
function recordingWebSocket(sockets) {
  return class RecordingWebSocket extends WebSocket {
    constructor(...ctorArgs) {
      super(...ctorArgs);
      this.sentFrames = [];
      sockets.push(this);
    }

    send(data, ...rest) {
      this.sentFrames.push(
        typeof data === 'string' ? data : `base64:${Buffer.from(data).toString('base64')}`,
      );
      return super.send(data, ...rest);
    }
  };
}

// The `ws` package's WebSocket sends extra upgrade headers given as an option.
function cookieWebSocket(sockets, cookie) {
  const Recording = recordingWebSocket(sockets);
  return class CookieWebSocket extends Recording {
    constructor(url, protocols) {
      super(url, protocols, { headers: { Cookie: cookie } });
    }
  };
}

function makeClient(token, sockets, websocket = recordingWebSocket(sockets)) {
  return new Centrifuge(args.url, {
    token,
    websocket,
    name: 'aether-js-test',
    timeout: 5000,
    minReconnectDelay: 100,
    maxReconnectDelay: 300,
  });
}

// Resolves with the first `event` emitted by `emitter` (matching `predicate`), or fails the run.
function next(emitter, event, predicate = () => true, ms = STEP_MS) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      emitter.off(event, handler);
      emit('step_timeout', { waiting_for: event, ms });
      process.exit(2);
    }, ms);
    function handler(ctx) {
      if (!predicate(ctx)) return;
      clearTimeout(timer);
      emitter.off(event, handler);
      resolve(ctx);
    }
    emitter.on(event, handler);
  });
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitFor(condition, what, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) {
      emit('step_timeout', { waiting_for: what, ms });
      process.exit(2);
    }
    await sleep(10);
  }
}

function subscribedFields(ctx) {
  return {
    channel: ctx.channel,
    recoverable: ctx.recoverable,
    positioned: ctx.positioned,
    was_recovering: ctx.wasRecovering,
    recovered: ctx.recovered,
    offset: ctx.streamPosition ? ctx.streamPosition.offset : null,
    epoch: ctx.streamPosition ? ctx.streamPosition.epoch : null,
  };
}

// The Protobuf build gives absent connInfo/chanInfo as empty byte arrays: left out, as JSON does.
function infoFields(info) {
  if (!info || !PROTOBUF) return info ?? null;
  const fields = { user: info.user, client: info.client };
  if (info.connInfo?.length) fields.connInfo = decode(info.connInfo);
  if (info.chanInfo?.length) fields.chanInfo = decode(info.chanInfo);
  return fields;
}

function publicationFields(ctx) {
  return { data: decode(ctx.data), offset: ctx.offset, info: infoFields(ctx.info) };
}

function errorFields(err) {
  return { code: err?.code ?? null, message: err?.message ?? String(err) };
}

async function pubsub() {
  const sockets = [];
  const client = makeClient(args.token, sockets);
  const sub = client.newSubscription(args.channel, { recoverable: true, positioned: true });
  sub.on('error', (ctx) => emit('subscription_error', errorFields(ctx.error)));
  client.on('error', (ctx) => emit('client_error', errorFields(ctx.error)));
  // The subscription exists (and is subscribing) before the client connects: centrifuge-js then
  // writes connect and subscribe into the same frame when the socket opens.
  sub.subscribe();
  const subscribed = next(sub, 'subscribed');
  const connected = next(client, 'connected');
  client.connect();

  const cctx = await connected;
  emit('connected', { client: cctx.client, transport: cctx.transport });
  // The channel compaction id the server gave (0: pushes carry the channel name).
  emit('subscribed', { ...subscribedFields(await subscribed), push_id: Number(sub._id ?? 0) });
  emit('frames', {
    sockets: sockets.length,
    first: sockets[0].sentFrames[0] ?? null,
    count_before_publish: sockets[0].sentFrames.length,
  });

  const own = next(sub, 'publication');
  const publishResult = await sub.publish(encode({ text: 'hello from js' }));
  emit('published', { result: publishResult });
  emit('publication', publicationFields(await own));

  const history = await sub.history({ limit: 10 });
  emit('history', {
    publications: history.publications.map(publicationFields),
    offset: history.offset,
    epoch: history.epoch,
  });

  const presence = await sub.presence();
  emit('presence', {
    clients: Object.entries(presence.clients).map(([key, info]) => ({
      key,
      client: info.client,
      user: info.user,
    })),
  });

  const stats = await sub.presenceStats();
  emit('presence_stats', { num_clients: stats.numClients, num_users: stats.numUsers });

  const disconnected = next(client, 'disconnected');
  client.disconnect();
  const dctx = await disconnected;
  emit('disconnected', { code: dctx.code, reason: dctx.reason });
}

async function recovery() {
  const sockets = [];
  const client = makeClient(args.token, sockets);
  const sub = client.newSubscription(args.channel, { recoverable: true });
  client.on('error', (ctx) => emit('client_error', errorFields(ctx.error)));
  sub.on('error', (ctx) => emit('subscription_error', errorFields(ctx.error)));
  const received = [];
  sub.on('publication', (ctx) => received.push(publicationFields(ctx)));

  sub.subscribe();
  const first = next(sub, 'subscribed');
  client.connect();
  emit('subscribed', subscribedFields(await first));

  const live = next(sub, 'publication');
  await sub.publish(encode({ n: 0 }));
  await live;
  emit('live', { received: received.slice() });

  const disconnected = next(client, 'disconnected');
  client.disconnect();
  const dctx = await disconnected;
  emit('disconnected', { code: dctx.code, reason: dctx.reason, sub_state: sub.state });

  // Another SDK client publishes while the first one is away.
  const otherSockets = [];
  const other = makeClient(args['other-token'], otherSockets);
  const otherConnected = next(other, 'connected');
  other.connect();
  await otherConnected;
  for (const n of [1, 2, 3]) {
    await other.publish(args.channel, encode({ n }));
  }
  emit('missed_published', { count: 3 });

  const received_before = received.length;
  const again = next(sub, 'subscribed');
  client.connect();
  const rctx = await again;
  emit('resubscribed', subscribedFields(rctx));
  await waitFor(() => received.length >= received_before + 3, 'recovered publications');
  emit('recovered_publications', { publications: received.slice(received_before) });
  emit('reconnect_frame', { sockets: sockets.length, first: sockets[1].sentFrames[0] ?? null });

  // Live delivery still works after the recovery.
  const after = next(sub, 'publication', (ctx) => ctx.data && decode(ctx.data).n === 4);
  await other.publish(args.channel, encode({ n: 4 }));
  emit('live_after_recovery', publicationFields(await after));

  other.disconnect();
  client.disconnect();
}

async function invalidToken() {
  const sockets = [];
  const client = makeClient(args.token, sockets);
  const states = [];
  client.on('state', (ctx) => states.push(ctx.newState));
  client.on('error', (ctx) => emit('client_error', errorFields(ctx.error)));
  let connectingAfterDisconnect = 0;
  let disconnectedSeen = false;
  client.on('connecting', () => {
    if (disconnectedSeen) connectingAfterDisconnect += 1;
  });
  const disconnected = next(client, 'disconnected');
  client.connect();
  const dctx = await disconnected;
  disconnectedSeen = true;
  emit('disconnected', { code: dctx.code, reason: dctx.reason });
  // With reconnect delays of 100-300 ms a reconnecting SDK would have opened several more
  // sockets in this time.
  await sleep(1500);
  emit('after_wait', {
    state: client.state,
    sockets: sockets.length,
    connecting_after_disconnect: connectingAfterDisconnect,
    states,
  });
}

async function rpc() {
  const sockets = [];
  const client = makeClient(undefined, sockets, cookieWebSocket(sockets, args.cookie));
  client.on('error', (ctx) => emit('client_error', errorFields(ctx.error)));
  const connected = next(client, 'connected');
  client.connect();
  const cctx = await connected;
  emit('connected', { client: cctx.client, data: cctx.data ?? null });
  const answered = await client.rpc('add', { n: [1, 2, 3] });
  emit('rpc_result', { data: answered.data });
  try {
    await client.rpc('unknown', {});
    emit('rpc_result', { unexpected: true });
  } catch (err) {
    emit('rpc_error', errorFields(err));
  }
  client.disconnect();
}


// Fossil delta compression: five publications that differ in one field, the SDK's own fossil
// decoder applying what the server sends; reports what arrived and how (the SDK's counters).
function doc(n) {
  return { seq: n, ticker: 'AAPL', history: Array.from({ length: 60 }, (_, i) => i),
           note: 'x'.repeat(100) };
}

async function delta() {
  const client = makeClient(args.token, []);
  const sub = client.newSubscription(args.channel, { delta: 'fossil' });
  sub.on('error', (ctx) => emit('subscription_error', errorFields(ctx.error)));
  const received = [];
  sub.on('publication', (ctx) => received.push(decode(ctx.data)));
  const subscribed = next(sub, 'subscribed');
  sub.subscribe();
  client.connect();
  await subscribed;
  for (let n = 0; n < 5; n++) {
    await sub.publish(encode(doc(n)));
  }
  await waitFor(() => received.length >= 5, 'publications');
  emit('delta', {
    negotiated: sub._delta_negotiated,
    received,
    deltas: sub._deltaNumDelta,
    full: sub._deltaNumFull,
  });
  client.disconnect();
}

const scenarios = { pubsub, recovery, delta, 'invalid-token': invalidToken, rpc };

async function main() {
  if (!args.url) fail('--url (or AETHER_URL) is required');
  const run = scenarios[args.scenario];
  if (!run) fail(`unknown --scenario ${args.scenario}; known: ${Object.keys(scenarios).join(', ')}`);
  await run();
  emit('done');
  clearTimeout(overall);
  process.exit(0);
}

main().catch((err) => {
  emit('failed', { message: String(err?.stack ?? JSON.stringify(err)) });
  process.exit(1);
});
