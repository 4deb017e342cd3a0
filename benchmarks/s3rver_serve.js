// The benchmarks' fast S3 stand-in: s3rver (npm, pinned by the harness) on 127.0.0.1, with one fix.
//
//   node s3rver_serve.js DATA_DIR [REQUEST_LOG]
//
// Prints the port as the first line of stdout, then serves until stdin closes or it is killed.
//
// The fix: s3rver 3.7.1 parses a suffix range (`Range: bytes=-N`, "the last N bytes") as
// `bytes=0-N` and answers the object's first N+1 bytes; object_store (Polars) reads Parquet
// footers that way. The range is not rewritten on the wire (it is signed): the request's
// suffix length is kept for this request only (AsyncLocalStorage) and the store's getObject
// turns it into the object's last N bytes, as S3 does (the whole object when N >= its size).
//
// REQUEST_LOG, when given, gets one JSON line per request (method, path and query, range,
// status, whether it copies, bytes in and out), from which the harness counts each engine's request mix.
const fs = require('fs');
const { AsyncLocalStorage } = require('async_hooks');
const S3rver = require('s3rver');

const suffix = new AsyncLocalStorage();
const server = new S3rver({ address: '127.0.0.1', port: 0, directory: process.argv[2], silent: true });

const log = process.argv[3] ? fs.createWriteStream(process.argv[3], { flags: 'a' }) : null;
server.middleware.unshift(async (ctx, next) => {
  const range = ctx.headers['range'];
  const m = /^bytes=-(\d+)$/.exec(range || '');
  try {
    await (m ? suffix.run(Number(m[1]), next) : next());
  } finally {
    if (log) {
      const line = {
        m: ctx.method, u: ctx.url, r: range || null, s: ctx.status, c: !!ctx.headers['x-amz-copy-source'],
        in: Number(ctx.headers['content-length'] || 0), out: Number(ctx.length || 0),
      };
      log.write(JSON.stringify(line) + '\n');
    }
  }
});

const store = server.store;
const getObject = store.getObject.bind(store);
store.getObject = async (bucket, key, options) => {
  const n = suffix.getStore();
  if (n === undefined) return getObject(bucket, key, options);
  const metadata = await store.getMetadata(bucket, key).catch(() => null);
  if (!metadata) return getObject(bucket, key, options);
  const size = Number(metadata['content-length']);
  if (n === 0) return getObject(bucket, key, { start: size, end: size });  // unsatisfiable, as S3 says
  return getObject(bucket, key, { start: Math.max(0, size - n), end: size - 1 });
};

server.run().then((address) => {
  process.stdout.write(`${address.port}\n`);
  process.stdin.resume();
  process.stdin.on('end', () => server.close().then(() => process.exit(0)));
});
