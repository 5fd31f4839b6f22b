// An independent xDS client (Node's @grpc/grpc-js with @grpc/grpc-js-xds)
// calling `xds:///echo` through a control plane named by GRPC_XDS_BOOTSTRAP.
//
// Usage: node xds_client.js PROTO_ROOT   (XDS_CREDENTIALS=1: xDS credentials;
//                                        XDS_TOPIC: another topic than echo;
//                                        GRPC_JS_MODULES: the directory whose
//                                        node_modules hold the packages, as
//                                        tests/js/old for an older release)
//
// The echo API is loaded at start by @grpc/proto-loader from
// PROTO_ROOT/examples/echo/v1/echo.proto: nothing of svckit runs here. It
// answers the commands of tests/py/xds_client.py, one JSON line each:
//
//   calls N [TOPIC]  N calls one after the other, to xds:///echo or to
//                    TOPIC (on a client of its own, kept): {"hosts", "errors"}
//   start            calls in a loop, 2 at a time, until `stop`
//   take             what the loop saw since the last take, with the time
//                    each host answered first: {"hosts", "errors", "first"}
//   stop             stops the loop, then as `take`
//   keyed HEADER K N N calls for each of K keys (key-0 … key-K-1), each with
//                    request header HEADER set to its key:
//                    {"keys": {key: {host: n}}, "errors"}
//   other TOPIC      one call to xds:///TOPIC on a client of its own:
//                    {"code", "details", "seconds"}

'use strict';

const path = require('path');
const readline = require('readline');
const { createRequire } = require('module');

const load = process.env.GRPC_JS_MODULES
  ? createRequire(path.join(path.resolve(process.env.GRPC_JS_MODULES), 'package.json'))
  : require;
const grpc = load('@grpc/grpc-js');
const xds = load('@grpc/grpc-js-xds');
const protoLoader = load('@grpc/proto-loader');

const CALL_TIMEOUT_MS = 5000;

function codeName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);
}

class Tally {
  constructor() {
    this.hosts = {};
    this.errors = [];
    this.first = {};
  }
  ok(host) {
    this.hosts[host] = (this.hosts[host] || 0) + 1;
    if (!(host in this.first)) this.first[host] = Date.now() / 1000;
  }
  error(e) {
    this.errors.push(`${codeName(e.code)}: ${e.details}`);
  }
  take() {
    const seen = { hosts: this.hosts, errors: this.errors, first: this.first };
    this.hosts = {};
    this.errors = [];
    this.first = {};
    return seen;
  }
}

function call(client, tally, metadata) {
  return new Promise((resolve) => {
    const deadline = Date.now() + CALL_TIMEOUT_MS;
    client.Echo({ payload: Buffer.from('xds') }, metadata || new grpc.Metadata(), { deadline }, (err, reply) => {
      if (err) tally.error(err);
      else tally.ok(reply.host);
      resolve();
    });
  });
}

// A first call that waits for the control plane's answer and a first
// endpoint (a ring hash channel stays idle until a call picks a node, so
// the channel's state alone would not do).
function ready(client) {
  return new Promise((resolve, reject) => {
    const options = { deadline: Date.now() + 30000, waitForReady: true };
    client.Echo({ payload: Buffer.from('ready') }, options, (err) => (err ? reject(err) : resolve()));
  });
}

function print(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

async function main() {
  xds.register();
  const root = process.argv[2];
  const definition = protoLoader.loadSync(path.join(root, 'examples/echo/v1/echo.proto'), {
    includeDirs: [root],
  });
  const Echo = grpc.loadPackageDefinition(definition).svckit.examples.echo.v1.Echo;
  // With XDS_CREDENTIALS=1 channels take their security from the control
  // plane (gRFC A29); plaintext where it sends none.
  const creds =
    process.env.XDS_CREDENTIALS === '1'
      ? new xds.XdsChannelCredentials(grpc.credentials.createInsecure())
      : grpc.credentials.createInsecure();
  const client = new Echo(`xds:///${process.env.XDS_TOPIC || 'echo'}`, creds);
  await ready(client);
  print({ ready: true });

  const topics = {};
  const tally = new Tally();
  let running = false;
  let loops = [];

  const loop = async () => {
    while (running) {
      await call(client, tally);
      await new Promise((r) => setTimeout(r, 2));
    }
  };

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const words = line.trim().split(/\s+/);
    if (!words[0]) continue;
    if (words[0] === 'calls') {
      let target = client;
      if (words.length > 2) {
        if (!(words[2] in topics)) {
          topics[words[2]] = new Echo(`xds:///${words[2]}`, creds);
          await ready(topics[words[2]]);
        }
        target = topics[words[2]];
      }
      const once = new Tally();
      for (let i = 0; i < Number(words[1]); i++) await call(target, once);
      print(once.take());
    } else if (words[0] === 'keyed') {
      const [header, keys, n] = [words[1], Number(words[2]), Number(words[3])];
      const seen = {};
      const errors = [];
      for (let k = 0; k < keys; k++) {
        const metadata = new grpc.Metadata();
        metadata.set(header, `key-${k}`);
        const once = new Tally();
        for (let i = 0; i < n; i++) await call(client, once, metadata);
        seen[`key-${k}`] = once.hosts;
        errors.push(...once.errors);
      }
      print({ keys: seen, errors });
    } else if (words[0] === 'start') {
      tally.take();
      running = true;
      loops = [loop(), loop()];
      print({ started: true });
    } else if (words[0] === 'take') {
      print(tally.take());
    } else if (words[0] === 'stop') {
      running = false;
      await Promise.all(loops);
      print(tally.take());
    } else if (words[0] === 'other') {
      const other = new Echo(`xds:///${words[1]}`, creds);
      const started = process.hrtime.bigint();
      const outcome = await new Promise((resolve) => {
        other.Echo({ payload: Buffer.from('xds') }, { deadline: Date.now() + 30000 }, (err) =>
          resolve(err ? { code: codeName(err.code), details: err.details } : { code: 'OK', details: '' }),
        );
      });
      outcome.seconds = Number(process.hrtime.bigint() - started) / 1e9;
      other.close();
      print(outcome);
    } else {
      process.stderr.write(`unknown command ${JSON.stringify(words[0])}\n`);
      process.exit(2);
    }
  }
  client.close();
  for (const t of Object.values(topics)) t.close();
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
