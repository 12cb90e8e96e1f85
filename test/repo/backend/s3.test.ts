import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RateLimiter } from '../../../src/repo/backend/rate.js';
import { shareS3Spec } from '../../../src/repo/backend/s3.js';
import {
  BackendError,
  formatS3Location,
  openBackend,
  parseS3Location,
  S3Backend,
  type BackendSpec,
} from '../../../src/repo/index.js';
import { startS3rver, startSwift, swiftAvailable, type S3TestServer } from '../../helpers/s3-servers.js';
import { conformanceCases } from './conformance-cases.js';
import { defineBackendConformance } from './conformance.js';
import { wrappedSpec } from './stacks.js';
import { runConformanceInWorker } from './worker-run.js';

const S3RVER_GAPS = {
  'no partial object is ever visible under its final name':
    's3rver writes an object in place, so a HEAD during its PUT sees part of it (Swift and AWS do not)',
};

let n = 0;
/** The spec of a fresh prefix in `bucket` of `server`. */
function specOf(server: S3TestServer, bucket: string, prefix = `t${++n}-${process.pid}`): BackendSpec {
  return {
    kind: 's3',
    location: `s3:${server.endpoint}/${bucket}/${prefix}`,
    s3: {
      ...parseS3Location(`s3:${server.endpoint}/${bucket}/${prefix}`),
      region: server.region,
      credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    },
  };
}

describe('S3 locations', () => {
  it('parses the three spellings and refuses the rest with a usage error', () => {
    expect(parseS3Location('s3:http://127.0.0.1:9000/bkt/a/b')).toEqual({
      endpoint: 'http://127.0.0.1:9000',
      bucket: 'bkt',
      prefix: 'a/b',
      pathStyle: true,
    });
    expect(parseS3Location('s3:https://s3.example.com/bkt/')).toEqual({
      endpoint: 'https://s3.example.com',
      bucket: 'bkt',
      prefix: '',
      pathStyle: true,
    });
    expect(parseS3Location('s3://my-bucket/vm/backups')).toEqual({
      bucket: 'my-bucket',
      prefix: 'vm/backups',
      pathStyle: false,
    });
    expect(formatS3Location(parseS3Location('s3://my-bucket//vm/'))).toBe('s3://my-bucket/vm');
    for (const bad of [
      's3:',
      's3://',
      's3:ftp://h/b',
      's3:http://h',
      's3://b',
      's3://bkt/../x',
      's3:http://u:p@h/bkt',
      's3://bkt/a b',
    ])
      expect(() => parseS3Location(bad), bad).toThrow(/valid|names no bucket|credentials/);
  });

  it('shares connections and bandwidth among worker stacks', () => {
    const s = { ...parseS3Location('s3://bkt'), connections: 16, limitUploadBytesPerSec: 1000 };
    expect(shareS3Spec(s, 3)).toMatchObject({ connections: 6, limitUploadBytesPerSec: 1000 / 3 });
    expect(shareS3Spec({ ...s, connections: 1 }, 4).connections).toBe(1);
  });

  it('a rate limiter holds a caller to its rate after a short burst', async () => {
    const r = new RateLimiter(1_000_000);
    const t0 = Date.now();
    for (let i = 0; i < 5; i++) await r.take(100_000); // 0.5 s of rate: within the burst
    expect(Date.now() - t0).toBeLessThan(400);
    await r.take(500_000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(600);
  });
});

describe('S3 backend on s3rver', () => {
  let server: S3TestServer;
  beforeAll(async () => {
    server = await startS3rver();
    const b = openBackend(specOf(server, 'conf'));
    await b.create!(); // the bucket
    await b.create!(); // twice: an existing bucket is fine
    await b.close();
  });
  afterAll(async () => server?.stop());

  defineBackendConformance('s3 (s3rver)', {
    make: async () => ({
      backend: openBackend({ ...specOf(server, 'conf'), retry: false }),
      cleanup: async () => {},
    }),
    knownGaps: S3RVER_GAPS,
  });
  defineBackendConformance('s3 (s3rver), through the wrapper stack', {
    make: async () => ({
      backend: openBackend(wrappedSpec(specOf(server, 'conf'))),
      cleanup: async () => {},
    }),
    knownGaps: S3RVER_GAPS,
  });

  it('runs the conformance cases in a worker thread, on a stack the worker builds from the spec', async () => {
    const report = await runConformanceInWorker(wrappedSpec(specOf(server, 'conf')));
    expect(report.inWorker).toBe(true);
    const failed = report.results.filter((r) => !r.ok && !(r.name in S3RVER_GAPS));
    expect(failed).toEqual([]);
    expect(report.results.map((r) => r.name)).toEqual(conformanceCases.map((c) => c.name));
  });

  it('learns that s3rver ignores If-None-Match and falls back to HEAD + PUT', async () => {
    const b = new S3Backend(specOf(server, 'conf').s3!);
    try {
      expect(b.conditionalWrites).toBe('unknown');
      expect(await b.putIfAbsent('x/a', Buffer.from('1'), { exclusive: true })).toBe(true);
      expect(b.conditionalWrites).toBe('ignored');
      expect(b.capabilities.atomicCreate).toBe(false);
      expect(await b.putIfAbsent('x/a', Buffer.from('2'))).toBe(false);
      expect((await b.get('x/a')).toString()).toBe('1');
      const left = [];
      for await (const o of b.list('tmp/')) left.push(o.key);
      expect(left).toEqual([]); // the probe object was deleted
    } finally {
      await b.close();
    }
  });

  it('a missing bucket: listing holds nothing, a read names the bucket', async () => {
    const b = openBackend(specOf(server, 'no-such-bucket-here'));
    try {
      const keys = [];
      for await (const o of b.list('')) keys.push(o);
      expect(keys).toEqual([]);
      expect(await b.describeAbsence!()).toMatch(/bucket 'no-such-bucket-here' does not exist/);
      const err = await b.get('config').catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BackendError);
    } finally {
      await b.close();
    }
  });
});

// Swift's s3api: a second implementation with other quirks (suffix ranges, 501 for conditional
// PUT, Content-MD5 on batch deletes); every conformance case, through the whole wrapper stack.
describe.runIf(swiftAvailable())('S3 backend on Swift s3api', () => {
  let server: S3TestServer;
  beforeAll(async () => {
    server = await startSwift();
    const b = openBackend(specOf(server, 'conf'));
    await b.create!();
    await b.close();
  }, 120_000);
  afterAll(async () => server?.stop());

  defineBackendConformance('s3 (Swift), through the wrapper stack', {
    make: async () => ({
      backend: openBackend(wrappedSpec(specOf(server, 'conf'))),
      cleanup: async () => {},
    }),
  });

  it('learns that Swift refuses If-None-Match (501) and falls back to HEAD + PUT', async () => {
    const b = new S3Backend(specOf(server, 'conf').s3!);
    try {
      expect(await b.putIfAbsent('x/a', Buffer.from('1'), { exclusive: true })).toBe(true);
      expect(b.conditionalWrites).toBe('refused');
      expect(await b.putIfAbsent('x/a', Buffer.from('2'), { exclusive: true })).toBe(false);
      expect((await b.get('x/a')).toString()).toBe('1');
    } finally {
      await b.close();
    }
  });

  it('a wrong secret key: a permission error naming the access key id', async () => {
    const spec = specOf(server, 'conf');
    spec.s3!.credentials = { accessKeyId: server.accessKeyId, secretAccessKey: 'not-the-secret' };
    const b = openBackend({ ...spec, retry: false });
    try {
      const err = (await b.get('config').catch((e: unknown) => e)) as BackendError;
      expect(err).toBeInstanceOf(BackendError);
      expect(err.kind).toBe('permission');
      expect(err.message).toContain(server.accessKeyId);
    } finally {
      await b.close();
    }
  });
});
