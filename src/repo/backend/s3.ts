import { createHash, randomBytes } from 'node:crypto';
import { Agent as HttpAgent, STATUS_CODES } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { Readable } from 'node:stream';
import type { S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import { printable } from '../../util/index.js';
import { BackendError } from '../errors.js';
import {
  assertRange,
  payloadLength,
  payloadParts,
  validateKey,
  type Backend,
  type BackendCapabilities,
  type BucketLockStatus,
  type CreateOptions,
  type ObjectInfo,
  type ObjectLockPolicy,
  type ObjectVersion,
  type VersionRef,
  type Payload,
  type PutOptions,
} from './backend.js';
import { RateLimiter } from './rate.js';
import { formatS3Location, type S3Location } from './s3-location.js';

/** The SDK, loaded on a stack's first request: a local repository's commands never pay for it. */
type Sdk = typeof import('@aws-sdk/client-s3');
interface Api {
  sdk: Sdk;
  client: S3Client;
}

// The SDK warns on every process that Node 20 support ends in January 2027; vmvault pins an SDK
// version that supports Node 20 (package.json), so the warning tells a user nothing to act on.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** The S3 part of a BackendSpec (plain JSON: a worker thread builds the same client from it). */
export interface S3Spec extends S3Location {
  /** Region; default: AWS_REGION / AWS_DEFAULT_REGION / the profile's, else us-east-1. */
  region?: string;
  /** Requests in flight at once (sockets of this stack's keep-alive agent). Default 16. */
  connections?: number;
  /**
   * Credentials given directly (tests, programs); default: the AWS SDK's standard chain
   * (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE, shared files,
   * instance metadata).
   */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Upload / download bandwidth of this stack, bytes per second (`--limit-upload` KiB/s × 1024). */
  limitUploadBytesPerSec?: number;
  limitDownloadBytesPerSec?: number;
  /** Object Lock retention put on the objects this stack writes (Repository sets it from the config). */
  objectLock?: ObjectLockPolicy;
}

/**
 * The spec each of `parts` threads' stacks gets so that together they keep the process's budget:
 * connections and bandwidth divided among them (at least one connection each).
 */
export function shareS3Spec(spec: S3Spec, parts: number): S3Spec {
  const n = Math.max(1, Math.floor(parts));
  const out: S3Spec = {
    ...spec,
    connections: Math.max(1, Math.ceil((spec.connections ?? S3_DEFAULT_CONNECTIONS) / n)),
  };
  if (spec.limitUploadBytesPerSec !== undefined) out.limitUploadBytesPerSec = spec.limitUploadBytesPerSec / n;
  if (spec.limitDownloadBytesPerSec !== undefined)
    out.limitDownloadBytesPerSec = spec.limitDownloadBytesPerSec / n;
  return out;
}

export const S3_DEFAULT_CONNECTIONS = 16;
/** `get` refuses a body larger than this (packs, the largest objects, are read in ranges). */
const MAX_WHOLE_GET_BYTES = 256 * 1024 * 1024;
/** Objects smaller than this never wait for the upload limit (they are only charged to it). */
const SMALL_OBJECT_BYTES = 64 * 1024;

/** Requests by kind and bytes moved: what `--json` outputs report (counted per thread). */
export interface S3RequestCounts {
  PUT: number;
  GET: number;
  HEAD: number;
  LIST: number;
  DELETE: number;
  bytesUp: number;
  bytesDown: number;
}

const counts: S3RequestCounts = { PUT: 0, GET: 0, HEAD: 0, LIST: 0, DELETE: 0, bytesUp: 0, bytesDown: 0 };

/** This thread's S3 request counts so far (a copy). */
export function s3RequestCounts(): S3RequestCounts {
  return { ...counts };
}

/** Adds counts from another thread (a worker's, reported when it finishes work). */
export function addS3RequestCounts(c: Partial<S3RequestCounts>): void {
  for (const k of Object.keys(counts) as (keyof S3RequestCounts)[]) {
    const v = c[k];
    if (typeof v === 'number' && Number.isFinite(v) && v > 0) counts[k] += v;
  }
}

type Kind = 'PUT' | 'GET' | 'HEAD' | 'LIST' | 'DELETE';

/**
 * Time allowed for one attempt: a base plus the object at a slow but live link's speed (or at the
 * bandwidth limit, when that is slower).
 */
function attemptTimeoutMs(bytes: number, limitBytesPerSec = Infinity): number {
  return 30_000 + Math.ceil((bytes / Math.min(512 * 1024, limitBytesPerSec)) * 1000);
}

/** Network failures worth another try (the retry wrapper retries kind 'transient'). */
const TRANSIENT_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EADDRNOTAVAIL',
  'UND_ERR_SOCKET',
  'ERR_STREAM_PREMATURE_CLOSE',
]);
const TRANSIENT_NAMES = new Set([
  'SlowDown',
  'InternalError',
  'ServiceUnavailable',
  'RequestTimeout',
  'RequestTimeoutException',
  'TimeoutError',
  'AbortError',
  'ThrottlingException',
  'Throttling',
  'TooManyRequests',
]);

interface SdkErrorShape {
  name?: string;
  code?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

/**
 * The S3 backend (docs/s3.md): objects are keys under the location's prefix; writes are single
 * PUTs of whole objects (packs are at most 128 MiB), durable when the PUT returns (no barrier);
 * reads are ranged GETs read straight into the caller's buffer. Retries are the retry wrapper's
 * (the SDK's own are off: one retry policy, bounded in one place); each attempt has a timeout that
 * grows with the object's size. Every response body is consumed or destroyed.
 */
export class S3Backend implements Backend {
  readonly location: string;
  private readonly clientConfig: S3ClientConfig;
  private apiP: Promise<Api> | undefined;
  private client: S3Client | undefined;
  private readonly prefix: string;
  private readonly connections: number;
  private conditional: 'unknown' | 'honoured' | 'ignored' | 'refused' = 'unknown';
  private probing: Promise<void> | undefined;
  /** Non-atomic putIfAbsent calls in flight, by key (one at a time per key). */
  private readonly creating = new Map<string, Promise<boolean>>();
  private accessKeyId: string | undefined;
  private lockPolicy: ObjectLockPolicy | undefined;
  private readonly agents: { http: HttpAgent; https: HttpsAgent };
  private readonly up: RateLimiter | undefined;
  private readonly down: RateLimiter | undefined;

  constructor(private readonly spec: S3Spec) {
    this.location = formatS3Location(spec);
    this.prefix = spec.prefix === '' ? '' : `${spec.prefix}/`;
    const n = spec.connections ?? S3_DEFAULT_CONNECTIONS;
    if (!Number.isSafeInteger(n) || n < 1 || n > 1024)
      throw new RangeError(`S3 connections must be 1..1024, not ${n}`);
    this.connections = n;
    if (spec.objectLock !== undefined) this.useObjectLock(spec.objectLock);
    this.up =
      spec.limitUploadBytesPerSec === undefined ? undefined : new RateLimiter(spec.limitUploadBytesPerSec);
    this.down =
      spec.limitDownloadBytesPerSec === undefined
        ? undefined
        : new RateLimiter(spec.limitDownloadBytesPerSec);
    this.agents = {
      http: new HttpAgent({ keepAlive: true, maxSockets: n }),
      https: new HttpsAgent({ keepAlive: true, maxSockets: n }),
    };
    const region =
      spec.region ??
      process.env.AWS_REGION ??
      process.env.AWS_DEFAULT_REGION ??
      (spec.endpoint ? 'us-east-1' : undefined);
    const config: S3ClientConfig = {
      ...(spec.endpoint === undefined ? { followRegionRedirects: true } : { endpoint: spec.endpoint }),
      ...(region === undefined ? {} : { region }),
      forcePathStyle: spec.pathStyle,
      // The SDK's default aws-chunked bodies with trailing checksums corrupt data on some servers
      // (../shared/TESTENV.md); our objects carry their own integrity (ids, GCM tags).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 1,
      requestHandler: {
        httpAgent: this.agents.http,
        httpsAgent: this.agents.https,
        connectionTimeout: 10_000,
      },
      ...(spec.credentials === undefined ? {} : { credentials: spec.credentials }),
    };
    this.clientConfig = config;
    if (spec.credentials) this.accessKeyId = spec.credentials.accessKeyId;
  }

  private api(): Promise<Api> {
    this.apiP ??= import('@aws-sdk/client-s3').then((sdk) => {
      this.client = new sdk.S3Client(this.clientConfig);
      // The server's clock, from each response's Date header (session ages: docs/gc.md).
      this.client.middlewareStack.add(
        (next) => async (args) => {
          const r = await next(args);
          const date = (r.response as { headers?: Record<string, string | undefined> } | undefined)?.headers
            ?.date;
          const t = date === undefined ? NaN : Date.parse(date);
          if (!Number.isNaN(t)) this.serverDate = { serverMs: t, localMs: Date.now() };
          return r;
        },
        { step: 'deserialize', name: 'vmvaultServerDate' },
      );
      return { sdk, client: this.client };
    });
    return this.apiP;
  }

  private serverDate: { serverMs: number; localMs: number } | undefined;

  /** The server's time now: its last Date header moved on by this host's clock since (1 s resolution). */
  async serverTimeMs(): Promise<number> {
    if (this.serverDate === undefined) await this.stat('config');
    const d = this.serverDate;
    return d === undefined ? Date.now() : d.serverMs + (Date.now() - d.localMs);
  }

  get capabilities(): BackendCapabilities {
    return {
      parallelOps: this.connections,
      // Known once the first putIfAbsent probed the server (false until then).
      atomicCreate: this.conditional === 'honoured',
      needsBarrier: false,
      modTimes: true,
      preferLargeReads: true,
    };
  }

  private k(key: string): string {
    validateKey(key);
    return this.prefix + key;
  }

  /** One request: counted, timed out after `attemptTimeoutMs(bytes)`, its errors mapped. */
  private async send<T>(
    kind: Kind,
    op: string,
    key: string,
    bytes: number,
    run: (signal: AbortSignal, api: Api) => Promise<T>,
  ): Promise<T> {
    counts[kind]++;
    const limit = kind === 'PUT' ? this.spec.limitUploadBytesPerSec : this.spec.limitDownloadBytesPerSec;
    const signal = AbortSignal.timeout(attemptTimeoutMs(bytes, limit));
    try {
      return await run(signal, await this.api());
    } catch (err) {
      throw await this.mapError(kind, op, key, err);
    }
  }

  async get(key: string): Promise<Buffer> {
    const k = this.k(key);
    return this.send('GET', 'get', key, 0, async (abortSignal, api) => {
      const r = await api.client.send(new api.sdk.GetObjectCommand({ Bucket: this.spec.bucket, Key: k }), {
        abortSignal,
      });
      const size = r.ContentLength ?? 0;
      // The server's word for the size is untrusted: no object vmvault reads whole is this large.
      if (!Number.isSafeInteger(size) || size < 0 || size > MAX_WHOLE_GET_BYTES) {
        destroyBody(r.Body as Readable | undefined);
        throw new BackendError(
          'other',
          `${key}: the server says it is ${size} bytes, more than any object vmvault reads whole`,
        );
      }
      const out = Buffer.allocUnsafe(size);
      const got = await readBody(r.Body as Readable | undefined, out, 0, this.down);
      if (got !== size)
        throw new BackendError('transient', `${key}: the response ended after ${got} of ${size} bytes`);
      return out;
    });
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(Math.max(0, Number.isSafeInteger(length) ? length : 0));
    if (!Number.isSafeInteger(length) || length < 0) assertRange(key, offset, length, 0);
    await this.getRangeInto(key, offset, out);
    return out;
  }

  async getRangeInto(key: string, offset: number, dest: Uint8Array): Promise<number> {
    const k = this.k(key);
    const length = dest.length;
    if (!Number.isSafeInteger(offset) || offset < 0) assertRange(key, offset, length, 0);
    if (length === 0) {
      const info = await this.stat(key);
      if (info === undefined) throw new BackendError('not-found', `${key}: not found`);
      assertRange(key, offset, 0, info.sizeBytes);
      return info.sizeBytes;
    }
    return this.send('GET', 'get', key, length, async (abortSignal, api) => {
      let r;
      try {
        r = await api.client.send(
          new api.sdk.GetObjectCommand({
            Bucket: this.spec.bucket,
            Key: k,
            Range: `bytes=${offset}-${offset + length - 1}`,
          }),
          { abortSignal },
        );
      } catch (err) {
        if (statusOf(err) === 416) {
          // The offset is at or past the end: learn the size for the one range error.
          const info = await this.stat(key);
          if (info === undefined) throw new BackendError('not-found', `${key}: not found`);
          assertRange(key, offset, length, info.sizeBytes);
        }
        throw err;
      }
      const body = r.Body as Readable | undefined;
      const cr = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(r.ContentRange ?? '');
      let size: number;
      let skip = 0;
      if (cr) {
        size = Number(cr[3]);
        if (Number(cr[1]) !== offset) {
          destroyBody(body);
          throw new BackendError(
            'other',
            `${key}: the server answered range ${r.ContentRange} for ${offset}+${length}`,
          );
        }
      } else {
        // A server that ignored the Range header sent the whole object.
        size = r.ContentLength ?? 0;
        skip = offset;
      }
      if (offset + length > size) {
        destroyBody(body);
        assertRange(key, offset, length, size);
      }
      const got = await readBody(body, dest, skip, this.down);
      if (got !== length)
        throw new BackendError('transient', `${key}: the response ended after ${got} of ${length} bytes`);
      return size;
    });
  }

  async put(key: string, data: Payload, _opts?: PutOptions): Promise<void> {
    await this.putObject(key, data, false);
  }

  useObjectLock(policy: ObjectLockPolicy): void {
    if (!(policy.periodMs > 0) || !['GOVERNANCE', 'COMPLIANCE'].includes(policy.mode))
      throw new RangeError(`invalid Object Lock policy ${JSON.stringify(policy)}`);
    this.lockPolicy = { ...policy, exemptPrefixes: [...policy.exemptPrefixes] };
  }

  /** The retention headers of a PUT of `key` under the stack's policy (none for exempt keys). */
  private retentionOf(key: string): { mode: 'GOVERNANCE' | 'COMPLIANCE'; until: Date } | undefined {
    const p = this.lockPolicy;
    if (p === undefined || p.exemptPrefixes.some((x) => key.startsWith(x))) return undefined;
    return { mode: p.mode, until: new Date(Date.now() + p.periodMs) };
  }

  /**
   * One PutObject of a whole payload (a gather list streams as its parts), `If-None-Match: *`
   * when `ifNoneMatch`. Uploads wait for the bandwidth limit; objects under 64 KiB (sessions,
   * manifests) are charged to it but never wait, so a heartbeat never queues behind packs.
   */
  private async putObject(key: string, data: Payload, ifNoneMatch: boolean): Promise<void> {
    const k = this.k(key);
    const length = payloadLength(data);
    if (length >= SMALL_OBJECT_BYTES) await this.up?.take(length);
    else this.up?.charge(length);
    // S3 requires Content-MD5 (or a flexible checksum) on a PUT that sets a retention.
    const lock = this.retentionOf(key);
    let md5: string | undefined;
    if (lock) {
      const h = createHash('md5');
      for (const part of payloadParts(data)) h.update(part);
      md5 = h.digest('base64');
    }
    await this.send('PUT', 'put', key, length, async (abortSignal, api) => {
      await api.client.send(
        new api.sdk.PutObjectCommand({
          Bucket: this.spec.bucket,
          Key: k,
          Body: bodyOf(data),
          ContentLength: length,
          ...(ifNoneMatch ? { IfNoneMatch: '*' } : {}),
          ...(lock
            ? { ObjectLockMode: lock.mode, ObjectLockRetainUntilDate: lock.until, ContentMD5: md5 }
            : {}),
        }),
        { abortSignal },
      );
      counts.bytesUp += length;
    });
  }

  async putIfAbsent(key: string, data: Payload, opts?: PutOptions): Promise<boolean> {
    validateKey(key);
    // Content-named objects need no probe: HEAD + PUT is right for them; the probe's 3 requests
    // are spent only where atomicity matters (opts.exclusive), and its answer kept for the rest.
    if (opts?.exclusive === true) await this.probeConditional();
    if (this.conditional !== 'honoured') {
      // HEAD, then PUT: atomic among this stack's callers (one at a time per key), not across
      // processes (docs/s3.md): fine for content-addressed and random names.
      for (;;) {
        const pending = this.creating.get(key);
        if (pending === undefined) break;
        if (await pending.catch(() => false)) return false;
      }
      const attempt = (async () => {
        if ((await this.stat(key)) !== undefined) return false;
        await this.put(key, data, opts);
        return true;
      })();
      this.creating.set(key, attempt);
      try {
        return await attempt;
      } finally {
        this.creating.delete(key);
      }
    }
    try {
      await this.putObject(key, data, true);
      return true;
    } catch (err) {
      if (err instanceof BackendError && err.kind === 'exists') return false;
      throw err;
    }
  }

  /**
   * Learns once whether the server honours `If-None-Match: *` on PUT: creates a probe object,
   * then tries to create it again. 412 → honoured; a second 200 → ignored (s3rver); 501 or
   * NotImplemented → refused (Swift). The probe is deleted (a put-only host leaves it: 0 bytes).
   */
  private async probeConditional(): Promise<void> {
    if (this.conditional !== 'unknown') return;
    this.probing ??= (async () => {
      const key = `tmp/probe-${randomBytes(8).toString('hex')}`;
      const tryPut = async (): Promise<'ok' | 'exists' | 'refused'> => {
        try {
          await this.putObject(key, Buffer.alloc(0), true);
          return 'ok';
        } catch (err) {
          if (err instanceof BackendError && err.kind === 'exists') return 'exists';
          const st = statusOf(err);
          const code = codeOf(err);
          if (st === 501 || code === 'NotImplemented' || (st === 400 && code === 'InvalidArgument'))
            return 'refused';
          throw err;
        }
      };
      const first = await tryPut();
      if (first === 'refused') this.conditional = 'refused';
      else this.conditional = (await tryPut()) === 'exists' ? 'honoured' : 'ignored';
      await this.delete(key).catch(() => undefined);
    })();
    try {
      await this.probing;
    } catch (err) {
      this.probing = undefined;
      throw err;
    }
  }

  /** How conditional creates behave on this server ('unknown' before the first putIfAbsent). */
  get conditionalWrites(): 'unknown' | 'honoured' | 'ignored' | 'refused' {
    return this.conditional;
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    const k = this.k(key);
    try {
      return await this.send('HEAD', 'stat', key, 0, async (abortSignal, api) => {
        const r = await api.client.send(new api.sdk.HeadObjectCommand({ Bucket: this.spec.bucket, Key: k }), {
          abortSignal,
        });
        return {
          key,
          sizeBytes: r.ContentLength ?? 0,
          ...(r.LastModified ? { modifiedMs: r.LastModified.getTime() } : {}),
        };
      });
    } catch (err) {
      if (err instanceof BackendError && err.kind === 'not-found') return undefined;
      // A HEAD's error has no body, so a 403 cannot say why (unknown key, wrong secret, clock
      // skew, no permission): one ranged GET of the same key brings the server's error code.
      if (err instanceof BackendError && statusOf(err) === 403) {
        const why = await this.send('GET', 'get', key, 1, (abortSignal, api) =>
          api.client.send(
            new api.sdk.GetObjectCommand({ Bucket: this.spec.bucket, Key: k, Range: 'bytes=0-0' }),
            {
              abortSignal,
            },
          ),
        ).then(
          (r) => destroyBody(r.Body as Readable | undefined),
          (e: unknown) => e,
        );
        const code = codeOf(why);
        if (
          why instanceof BackendError &&
          code !== undefined &&
          !['Forbidden', '403', 'NotFound'].includes(code)
        )
          throw why;
      }
      throw err;
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    if (prefix !== '' && (prefix.startsWith('/') || prefix.includes('..') || prefix.includes('\0')))
      throw new RangeError(`invalid list prefix '${prefix}'`);
    const full = this.prefix + prefix;
    let token: string | undefined;
    for (;;) {
      let page;
      try {
        page = await this.send('LIST', 'list', prefix === '' ? '(all)' : prefix, 0, (abortSignal, api) =>
          api.client.send(
            new api.sdk.ListObjectsV2Command({
              Bucket: this.spec.bucket,
              Prefix: full === '' ? undefined : full,
              ...(token === undefined ? {} : { ContinuationToken: token }),
            }),
            { abortSignal },
          ),
        );
      } catch (err) {
        // An absent bucket holds no objects (init creates it; open reports it: describeAbsence).
        if (codeOf(err) === 'NoSuchBucket') return;
        throw err;
      }
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.prefix)) continue;
        const key = o.Key.slice(this.prefix.length);
        if (key === '' || key.endsWith('/')) continue; // "directory" markers some tools create
        yield {
          key,
          sizeBytes: o.Size ?? 0,
          ...(o.LastModified ? { modifiedMs: o.LastModified.getTime() } : {}),
        };
      }
      if (!page.IsTruncated || !page.NextContinuationToken) return;
      token = page.NextContinuationToken;
    }
  }

  async delete(key: string): Promise<void> {
    const k = this.k(key);
    try {
      await this.send('DELETE', 'delete', key, 0, (abortSignal, api) =>
        api.client.send(new api.sdk.DeleteObjectCommand({ Bucket: this.spec.bucket, Key: k }), {
          abortSignal,
        }),
      );
    } catch (err) {
      if (err instanceof BackendError && err.kind === 'not-found') return;
      throw err;
    }
  }

  /**
   * DeleteObjects of up to 1000 keys (quiet: only failures come back). Content-MD5 is set
   * (Swift and Ceph require it; the SDK's flexible checksum alone does not satisfy them). A key
   * that was already gone is not an error; any other per-key failure is, naming the first.
   */
  async deleteMany(keys: readonly string[]): Promise<void> {
    if (keys.length === 0) return;
    if (keys.length > 1000) throw new RangeError(`DeleteObjects takes at most 1000 keys, not ${keys.length}`);
    const objects = keys.map((key) => ({ Key: this.k(key) }));
    const r = await this.send('DELETE', 'delete', keys[0]!, 0, (abortSignal, api) => {
      const cmd = new api.sdk.DeleteObjectsCommand({
        Bucket: this.spec.bucket,
        Delete: { Objects: objects, Quiet: true },
      });
      addContentMd5(cmd);
      return api.client.send(cmd, { abortSignal });
    });
    const failed = (r.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
    if (failed.length > 0) {
      const e = failed[0]!;
      throw new BackendError(
        e.Code === 'AccessDenied' ? 'permission' : 'other',
        `${this.location}: DeleteObjects could not delete ${failed.length} of ${keys.length} objects, the first ${printable(e.Key ?? '?', 200)}: ${printable(e.Code ?? '?', 60)} ${printable(e.Message ?? '', 200)}`,
      );
    }
  }

  async barrier(_keys: Iterable<string>): Promise<void> {}

  // ---- Object Lock (docs/s3.md) ----

  /** GetObjectLockConfiguration: enabled, and the bucket's default retention rule if any. */
  async objectLockStatus(): Promise<BucketLockStatus> {
    try {
      const r = await this.send(
        'GET',
        'get Object Lock configuration of',
        this.spec.bucket,
        0,
        (abortSignal, api) =>
          api.client.send(new api.sdk.GetObjectLockConfigurationCommand({ Bucket: this.spec.bucket }), {
            abortSignal,
          }),
      );
      const c = r.ObjectLockConfiguration;
      const d = c?.Rule?.DefaultRetention;
      const rule =
        d === undefined
          ? undefined
          : `${d.Mode ?? '?'} ${d.Days !== undefined ? `${d.Days} days` : `${d.Years ?? '?'} years`}`;
      return {
        enabled: c?.ObjectLockEnabled === 'Enabled',
        ...(rule === undefined ? {} : { defaultRetention: rule }),
      };
    } catch (err) {
      const code = codeOf(err);
      const st = statusOf(err);
      // No configuration (AWS), or a server without the feature (501, NotImplemented, 404).
      if (
        code === 'ObjectLockConfigurationNotFoundError' ||
        code === 'NotImplemented' ||
        st === 501 ||
        (st === 404 && code !== 'NoSuchBucket') ||
        (st === 400 && code !== undefined && /Invalid|NotImplemented|Unsupported/i.test(code))
      )
        return { enabled: false };
      throw err;
    }
  }

  async extendRetention(key: string, untilMs: number): Promise<'extended' | 'absent'> {
    const p = this.lockPolicy;
    if (p === undefined) throw new RangeError('extendRetention needs an Object Lock policy (useObjectLock)');
    const k = this.k(key);
    try {
      await this.send('PUT', 'put retention of', key, 0, (abortSignal, api) => {
        const cmd = new api.sdk.PutObjectRetentionCommand({
          Bucket: this.spec.bucket,
          Key: k,
          Retention: { Mode: p.mode, RetainUntilDate: new Date(untilMs) },
        });
        addContentMd5(cmd);
        return api.client.send(cmd, { abortSignal });
      });
      return 'extended';
    } catch (err) {
      // The key's current version is a delete marker (405) or there is none (404).
      if ((err instanceof BackendError && err.kind === 'not-found') || statusOf(err) === 405) return 'absent';
      throw err;
    }
  }

  async *listVersions(prefix: string): AsyncIterable<ObjectVersion> {
    if (prefix !== '' && (prefix.startsWith('/') || prefix.includes('..') || prefix.includes('\0')))
      throw new RangeError(`invalid list prefix '${prefix}'`);
    const full = this.prefix + prefix;
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    for (;;) {
      const page = await this.send(
        'LIST',
        'list versions',
        prefix === '' ? '(all)' : prefix,
        0,
        (abortSignal, api) =>
          api.client.send(
            new api.sdk.ListObjectVersionsCommand({
              Bucket: this.spec.bucket,
              Prefix: full === '' ? undefined : full,
              ...(keyMarker === undefined ? {} : { KeyMarker: keyMarker }),
              ...(versionMarker === undefined ? {} : { VersionIdMarker: versionMarker }),
            }),
            { abortSignal },
          ),
      );
      const items: ObjectVersion[] = [];
      const add = (
        o: { Key?: string; VersionId?: string; IsLatest?: boolean; LastModified?: Date; Size?: number },
        deleteMarker: boolean,
      ): void => {
        if (o.Key === undefined || !o.Key.startsWith(this.prefix) || o.VersionId === undefined) return;
        const key = o.Key.slice(this.prefix.length);
        if (key === '' || key.endsWith('/')) return;
        const size = o.Size ?? 0;
        items.push({
          key,
          versionId: o.VersionId,
          latest: o.IsLatest === true,
          deleteMarker,
          sizeBytes: Number.isSafeInteger(size) && size >= 0 ? size : 0,
          modifiedMs: o.LastModified?.getTime() ?? 0,
        });
      };
      for (const v of page.Versions ?? []) add(v, false);
      for (const m of page.DeleteMarkers ?? []) add(m, true);
      items.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : b.modifiedMs - a.modifiedMs));
      yield* items;
      if (!page.IsTruncated) return;
      if (
        page.NextKeyMarker === undefined ||
        (page.NextKeyMarker === keyMarker && page.NextVersionIdMarker === versionMarker)
      )
        throw new BackendError(
          'other',
          `${this.location}: ListObjectVersions is truncated without a next marker`,
        );
      keyMarker = page.NextKeyMarker;
      versionMarker = page.NextVersionIdMarker;
    }
  }

  async deleteVersions(refs: readonly VersionRef[]): Promise<{ locked: VersionRef[] }> {
    if (refs.length === 0) return { locked: [] };
    if (refs.length > 1000) throw new RangeError(`DeleteObjects takes at most 1000 keys, not ${refs.length}`);
    const objects = refs.map((r) => ({ Key: this.k(r.key), VersionId: r.versionId }));
    const r = await this.send('DELETE', 'delete versions of', refs[0]!.key, 0, (abortSignal, api) => {
      const cmd = new api.sdk.DeleteObjectsCommand({
        Bucket: this.spec.bucket,
        Delete: { Objects: objects, Quiet: true },
      });
      addContentMd5(cmd);
      return api.client.send(cmd, { abortSignal });
    });
    const locked: VersionRef[] = [];
    const failed: typeof r.Errors = [];
    for (const e of r.Errors ?? []) {
      if (e.Code === 'NoSuchKey' || e.Code === 'NoSuchVersion') continue;
      if (e.Code === 'AccessDenied' && e.Key?.startsWith(this.prefix) && e.VersionId !== undefined)
        locked.push({ key: e.Key.slice(this.prefix.length), versionId: e.VersionId });
      else failed.push(e);
    }
    if (failed.length > 0) {
      const e = failed[0]!;
      throw new BackendError(
        'other',
        `${this.location}: DeleteObjects could not delete ${failed.length} of ${refs.length} versions, the first ${printable(e.Key ?? '?', 200)}: ${printable(e.Code ?? '?', 60)} ${printable(e.Message ?? '', 200)}`,
      );
    }
    return { locked };
  }

  /** Creates the bucket when it is missing (init); a bucket that exists is used as it is. */
  async create(opts: CreateOptions = {}): Promise<void> {
    if (await this.bucketExists()) return;
    try {
      await this.send('PUT', 'create bucket', this.spec.bucket, 0, async (abortSignal, api) => {
        const region = await api.client.config.region();
        await api.client.send(
          new api.sdk.CreateBucketCommand({
            Bucket: this.spec.bucket,
            ...(opts.objectLock === true ? { ObjectLockEnabledForBucket: true } : {}),
            ...(this.spec.endpoint === undefined && region !== 'us-east-1'
              ? { CreateBucketConfiguration: { LocationConstraint: region as never } }
              : {}),
          }),
          { abortSignal },
        );
      });
    } catch (err) {
      const code = codeOf(err);
      if (code === 'BucketAlreadyOwnedByYou') return;
      if (code === 'BucketAlreadyExists')
        throw new BackendError('permission', `bucket '${this.spec.bucket}' belongs to someone else`, {
          hint: 'choose another bucket name (bucket names are global on AWS)',
        });
      throw err;
    }
  }

  private async bucketExists(): Promise<boolean> {
    try {
      await this.send('HEAD', 'head bucket', this.spec.bucket, 0, (abortSignal, api) =>
        api.client.send(new api.sdk.HeadBucketCommand({ Bucket: this.spec.bucket }), { abortSignal }),
      );
      return true;
    } catch (err) {
      if (err instanceof BackendError && err.kind === 'not-found') return false;
      throw err;
    }
  }

  /** Why there is no repository here, when the reason is the bucket: one clause, or undefined. */
  async describeAbsence(): Promise<string | undefined> {
    return (await this.bucketExists()) ? undefined : `bucket '${this.spec.bucket}' does not exist`;
  }

  async close(): Promise<void> {
    this.client?.destroy();
    this.agents.http.destroy();
    this.agents.https.destroy();
  }

  private async keyId(): Promise<string | undefined> {
    if (this.accessKeyId !== undefined) return this.accessKeyId;
    try {
      const c = await (await this.api()).client.config.credentials();
      this.accessKeyId = c.accessKeyId;
    } catch {
      /* no credentials: the error says so */
    }
    return this.accessKeyId;
  }

  /** One line per failure a user meets: the endpoint, the operation, the status (docs/s3.md). */
  private async mapError(kind: Kind, op: string, key: string, err: unknown): Promise<BackendError> {
    if (err instanceof BackendError) return err;
    const e = (err ?? {}) as SdkErrorShape;
    const status = e.$metadata?.httpStatusCode;
    const name = e.Code ?? (e.name === 'Unknown' ? undefined : e.name) ?? '';
    const code = e.code ?? '';
    const where = this.spec.endpoint ?? 'AWS S3';
    const what = `S3 ${kind} of ${key} at ${this.location}`;
    if (name === 'CredentialsProviderError' || /Could not load credentials/i.test(e.message ?? ''))
      return new BackendError('permission', `no S3 credentials for ${this.location}`, {
        cause: err,
        hint: 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (docs/s3.md)',
      });
    if (
      TRANSIENT_CODES.has(code) ||
      TRANSIENT_NAMES.has(name) ||
      status === 500 ||
      status === 502 ||
      status === 503 ||
      status === 504
    ) {
      const reason =
        code === 'ECONNREFUSED'
          ? `cannot reach ${where} (connection refused)`
          : name === 'AbortError' || name === 'TimeoutError' || code === 'ETIMEDOUT'
            ? `${where} did not answer in time`
            : status !== undefined
              ? `${where} answered ${status} ${name || (STATUS_CODES[status] ?? '')}`.trimEnd()
              : `${where}: ${code || name || 'connection failed'}`;
      return new BackendError('transient', `${what} failed: ${reason}`, {
        cause: err,
        hint:
          code === 'ECONNREFUSED'
            ? `check that the S3 endpoint ${where} is up and the location is right`
            : 'run the command again later',
      });
    }
    if (code === 'ENOTFOUND')
      return new BackendError('other', `${what} failed: cannot resolve the host of ${where}`, {
        cause: err,
        hint: 'check the endpoint in the repository location',
      });
    if (
      code === 'DEPTH_ZERO_SELF_SIGNED_CERT' ||
      code === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' ||
      code.startsWith('ERR_TLS') ||
      code.startsWith('CERT_')
    )
      return new BackendError('other', `${what} failed: TLS error from ${where} (${code})`, {
        cause: err,
        hint: 'give a certificate the host trusts (NODE_EXTRA_CA_CERTS=FILE) or use s3:http:// on a trusted network',
      });
    if (name === 'NoSuchBucket')
      return new BackendError('not-found', `bucket '${this.spec.bucket}' does not exist at ${where}`, {
        cause: err,
        hint: `create the repository with 'vmvault init ${this.location}' (it creates the bucket), or check the name`,
      });
    if (status === 404 || name === 'NoSuchKey' || name === 'NotFound')
      return new BackendError('not-found', `${key}: not found`, { cause: err });
    if (status === 412 || name === 'PreconditionFailed')
      return new BackendError('exists', `${key}: exists`, { cause: err });
    if (status === 416 || name === 'InvalidRange')
      return new BackendError('range', `${what}: the range is past the end of the object`, { cause: err });
    if (name === 'InvalidAccessKeyId')
      return new BackendError(
        'permission',
        `${where} does not know the access key id ${(await this.keyId()) ?? '(none)'}`,
        {
          cause: err,
          hint: 'check AWS_ACCESS_KEY_ID or AWS_PROFILE',
        },
      );
    if (name === 'SignatureDoesNotMatch')
      return new BackendError(
        'permission',
        `${where} refused the secret key of access key id ${(await this.keyId()) ?? '(none)'}`,
        {
          cause: err,
          hint: 'check AWS_SECRET_ACCESS_KEY (or the profile) for that access key',
        },
      );
    if (name === 'RequestTimeTooSkewed')
      return new BackendError('other', `this host's clock differs too much from ${where}'s`, {
        cause: err,
        hint: 'set the clock right (chrony or systemd-timesyncd) and run the command again',
      });
    if (name === 'AccessDenied')
      return new BackendError(
        'permission',
        `${what} was denied: 403 AccessDenied for access key id ${(await this.keyId()) ?? '(none)'}`,
        {
          cause: err,
          hint: `grant that key ${S3_ACTION[kind]} on the bucket (docs/s3.md has the policies)`,
        },
      );
    if (status === 403)
      // A HEAD's 403 has no body: an unknown key, a wrong secret and a missing permission look alike.
      return new BackendError(
        'permission',
        `${what} was denied: 403 ${name === '' || name === 'Error' ? 'Forbidden' : name} for access key id ${(await this.keyId()) ?? '(none)'}`,
        {
          cause: err,
          hint: `check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and that the key has ${S3_ACTION[kind]} on the bucket (docs/s3.md)`,
        },
      );
    if (status === 507 || name === 'QuotaExceeded' || name === 'EntityTooLarge')
      return new BackendError(
        'no-space',
        `${what} failed: ${where} answered ${status ?? ''} ${name}`.trim(),
        { cause: err },
      );
    const detail =
      status !== undefined
        ? `${where} answered ${status} ${name || (STATUS_CODES[status] ?? '')}`.trimEnd()
        : `${name || code || String(err)}`;
    return new BackendError('other', `${what} failed: ${detail}`, { cause: err });
  }
}

/**
 * Sets Content-MD5 on a request whose body the SDK builds (DeleteObjects, PutObjectRetention):
 * Swift and Ceph require it, and so does AWS for retention; the SDK's flexible checksum alone
 * does not satisfy them.
 */
type BuildStack = {
  add(
    mw: (
      next: (args: { request: unknown }) => Promise<unknown>,
    ) => (args: { request: unknown }) => Promise<unknown>,
    opts: { step: 'build'; name: string; priority: 'low' },
  ): void;
};
function addContentMd5(cmd: { middlewareStack: unknown }): void {
  (cmd.middlewareStack as BuildStack).add(
    (next) => async (args) => {
      const req = args.request as { body?: unknown; headers?: Record<string, string> };
      if (typeof req.body === 'string' || req.body instanceof Uint8Array)
        req.headers = { ...req.headers, 'content-md5': createHash('md5').update(req.body).digest('base64') };
      return next(args);
    },
    { step: 'build', name: 'vmvaultContentMd5', priority: 'low' },
  );
}

/** The IAM action a request of each kind needs (for "permission denied" hints). */
const S3_ACTION: Record<Kind, string> = {
  PUT: 's3:PutObject',
  GET: 's3:GetObject',
  HEAD: 's3:GetObject',
  LIST: 's3:ListBucket',
  DELETE: 's3:DeleteObject',
};

/**
 * A request body without a copy: one buffer as it is, a gather list (a pack's header, records and
 * trailer) as a stream of its parts with the Content-Length given beside it. Each try gets a new
 * stream (the retry wrapper calls put again).
 */
function bodyOf(data: Payload): Buffer | Readable {
  const parts = payloadParts(data).filter((p) => p.length > 0);
  if (parts.length === 0) return Buffer.alloc(0);
  if (parts.length === 1) return parts[0]!;
  return Readable.from(parts, { objectMode: false });
}

/** The S3 error code of a failure (from the response body; HEADs have none), or undefined. */
function codeOf(err: unknown): string | undefined {
  const e = (err instanceof BackendError ? err.cause : err) as SdkErrorShape | undefined;
  const code = e?.Code ?? e?.name;
  return code === undefined || code === '' || code === 'Unknown' ? undefined : code;
}

function statusOf(err: unknown): number | undefined {
  if (err instanceof BackendError) return (err.cause as SdkErrorShape | undefined)?.$metadata?.httpStatusCode;
  return (err as SdkErrorShape | undefined)?.$metadata?.httpStatusCode;
}

function destroyBody(body: Readable | undefined): void {
  body?.destroy?.();
}

/**
 * Copies a response body into `dest` after skipping `skip` bytes (a server that ignored the Range
 * header); returns the bytes copied. Bytes beyond `dest` are read and dropped (up to 1 MiB, then
 * the stream is destroyed).
 */
async function readBody(
  body: Readable | undefined,
  dest: Uint8Array,
  skip: number,
  limit: RateLimiter | undefined,
): Promise<number> {
  if (body === undefined) return 0;
  let at = 0;
  let toSkip = skip;
  let extra = 0;
  // Read to the end, so the connection goes back to the keep-alive pool: leaving the loop early
  // (an error, or a server that ignored the Range and sends far more) destroys the stream and
  // with it the connection.
  for await (const chunk of body as AsyncIterable<Buffer>) {
    let c = chunk;
    if (toSkip > 0) {
      if (c.length <= toSkip) {
        toSkip -= c.length;
        continue;
      }
      c = c.subarray(toSkip);
      toSkip = 0;
    }
    const n = Math.min(c.length, dest.length - at);
    if (n > 0) dest.set(n === c.length ? c : c.subarray(0, n), at);
    at += n;
    counts.bytesDown += n;
    extra += c.length - n;
    if (extra > 1024 * 1024) break;
    if (limit && n > 0) await limit.take(n);
  }
  return at;
}
