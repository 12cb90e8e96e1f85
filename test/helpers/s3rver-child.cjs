'use strict';
/* global require, process, setTimeout */
/* eslint-disable @typescript-eslint/no-require-imports -- a CommonJS launcher run by plain node */
// An S3 server for the tests: @20minutes/s3rver in its own process.
//   node --openssl-legacy-provider test/helpers/s3rver-child.cjs <port> <dir>
// Port 0 picks a free port. Prints one JSON line once listening: {"address":"127.0.0.1","port":N}.
// Creates no bucket (tests create theirs). Exits 0 on SIGTERM/SIGINT, after closing the server.
// --openssl-legacy-provider: s3rver encrypts ListObjectsV2 continuation tokens with DES, which
// OpenSSL 3 refuses without it (every paginated listing would be a 500).
// allowMismatchedSignatures: s3rver canonicalises the SDK's `PUT /bucket/` as `/bucket`, so
// bucket-level requests would fail with SignatureDoesNotMatch (object requests are checked).
const S3rver = require('@20minutes/s3rver');

const [portArg, dir] = process.argv.slice(2);
const port = Number(portArg);
if (!dir || !Number.isInteger(port) || port < 0) {
  process.stderr.write('usage: node --openssl-legacy-provider s3rver-child.cjs <port> <dir>\n');
  process.exit(2);
}

const server = new S3rver({
  address: '127.0.0.1',
  port,
  directory: dir,
  silent: true,
  allowMismatchedSignatures: true,
});

let closing = false;
function shutdown() {
  if (closing) return;
  closing = true;
  server.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
  setTimeout(() => process.exit(0), 2000).unref(); // keep-alive sockets must not hold us up
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
// When stdin is a pipe from the parent, its closing (the parent died) also ends us: no orphan
// after a crashed test runner.
let stdinIsPipe = false;
try {
  const st = require('node:fs').fstatSync(0);
  stdinIsPipe = st.isFIFO() || st.isSocket(); // node's spawn() pipes are socket pairs
} catch {
  // no stdin
}
if (stdinIsPipe) {
  process.stdin.on('end', shutdown);
  process.stdin.on('error', shutdown);
  process.stdin.resume();
}

server.run().then(
  (addr) => {
    process.stdout.write(JSON.stringify({ address: addr.address, port: addr.port }) + '\n');
  },
  (err) => {
    process.stderr.write(`s3rver: ${err && err.message ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
