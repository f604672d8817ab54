// The soak's centrifuge-js witnesses: a few real npm `centrifuge` SDK clients (Node, over the `ws`
// package) subscribed to one channel through nginx for the whole run, each printing every
// publication it gets and every (re)subscription as a JSON line on stdout; witnesses.py keeps
// the ledger (by offset and by the publications' own ids) exactly as for the Python witness.
//
//   node witness.mjs   (SOAK_URL, SOAK_CHANNEL, SOAK_TOKENS="jwt1 jwt2 ...", SOAK_JS_DIR: where
//                       tests/js keeps node_modules; NODE_EXTRA_CA_CERTS: the soak's CA;
//                       SOAK_DIRECT_URL: the last client's, straight to a process)
//
// Lines: {"c": k, "ev": "subscribed", "recovered": bool, "epoch": "...", "offset": n}
//        {"c": k, "ev": "pub", "offset": n, "id": "...", "lat": ms}
//        {"c": k, "ev": "state", "to": "connected" | "connecting" | "disconnected", "code": n}
// It runs until its stdin closes (the harness's way of stopping it), then disconnects.

import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import path from 'node:path';

const require = createRequire(path.join(process.env.SOAK_JS_DIR, 'package.json'));
const { Centrifuge } = await import(pathToFileURL(require.resolve('centrifuge')).href);
const { default: WebSocket } = await import(pathToFileURL(require.resolve('ws')).href);

function emit(fields) {
  process.stdout.write(JSON.stringify(fields) + '\n');
}

// The last token's client goes straight to one Aether process (SOAK_DIRECT_URL, plain ws://),
// the others through nginx: the difference in their latencies is nginx's (TLS and a hop).
const tokens = process.env.SOAK_TOKENS.split(' ');
const clients = tokens.map((token, c) => {
  const direct = c === tokens.length - 1 && process.env.SOAK_DIRECT_URL;
  const client = new Centrifuge(direct || process.env.SOAK_URL, {
    token,
    websocket: WebSocket,
    name: 'soak-js-witness',
    // The SDK's own backoff, as shipped (500 ms .. 20 s), only shortened like the load clients'.
    minReconnectDelay: 200,
    maxReconnectDelay: 4000,
  });
  client.on('connected', () => emit({ c, ev: 'state', to: 'connected' }));
  client.on('connecting', (ctx) => emit({ c, ev: 'state', to: 'connecting', code: ctx.code }));
  client.on('disconnected', (ctx) => emit({ c, ev: 'state', to: 'disconnected', code: ctx.code }));
  const sub = client.newSubscription(process.env.SOAK_CHANNEL);
  // Publications recovered on (re)subscribing are emitted in the same turn as `subscribed`:
  // they count in the ledger but carry no latency (their wait is the outage's, as the load
  // clients count only live deliveries).
  let recovering = false;
  sub.on('subscribed', (ctx) => {
    recovering = true;
    setImmediate(() => { recovering = false; });
  });
  sub.on('subscribed', (ctx) => emit({
    c, ev: 'subscribed', recovered: ctx.recovered, wasRecovering: ctx.wasRecovering,
    epoch: ctx.streamPosition?.epoch ?? '', offset: ctx.streamPosition?.offset ?? 0,
  }));
  // Latency on Node's clock (ms since the epoch; `t` is the publisher's time.time_ns()).
  sub.on('publication', (ctx) => emit({
    c, ev: 'pub', offset: ctx.offset, id: ctx.data?.i ?? null,
    lat: ctx.data?.t && !recovering
      ? performance.timeOrigin + performance.now() - ctx.data.t / 1e6 : null,
  }));
  sub.subscribe();
  client.connect();
  return client;
});

process.stdin.resume();
process.stdin.on('end', () => {
  for (const client of clients) client.disconnect();
  setTimeout(() => process.exit(0), 200);
});
