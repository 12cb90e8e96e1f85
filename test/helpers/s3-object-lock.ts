/**
 * S3 Object Lock and versioning, emulated in the fault proxy (s3-fault-proxy.ts) in front of a
 * server that has neither (s3rver, Swift). Neither test server implements Object Lock, so this
 * is how the request flow is tested; a real bucket's behaviour is described in docs/s3.md.
 *
 * What is emulated, for buckets created through the proxy with
 * `x-amz-bucket-object-lock-enabled: true` (or named in `lockedBuckets`):
 * - GetObjectLockConfiguration (enabled, no default rule);
 * - PutObject with `x-amz-object-lock-mode` / `-retain-until-date`: refused without Content-MD5
 *   (as AWS does), or with a wrong one; forwarded, and a version recorded;
 * - Put/GetObjectRetention on the current version: shortening COMPLIANCE (or GOVERNANCE without
 *   the bypass header) is refused with 403 AccessDenied, as is a mode change from COMPLIANCE;
 * - DeleteObject and DeleteObjects without version ids: forwarded (the upstream object goes),
 *   and a delete marker recorded: the old version stays, without its bytes (nobody reads it);
 * - DeleteObject / DeleteObjects with version ids: refused (AccessDenied) while the version's
 *   retention runs, else the version is forgotten. Deleting a version that would make an older
 *   one current again is answered 501: the emulator has no bytes for it, and vmvault never does it;
 * - ListObjectVersions, paged by `maxKeys`.
 * Times are this host's clock.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

export interface Answer {
  status: number;
  headers: Record<string, string | string[]>;
  body: Buffer;
}

interface Version {
  id: string;
  modifiedMs: number;
  sizeBytes: number;
  marker: boolean;
  lock?: { mode: 'GOVERNANCE' | 'COMPLIANCE'; untilMs: number };
}

interface Bucket {
  /** Per key, newest first. */
  keys: Map<string, Version[]>;
}

export interface ObjectLockStats {
  /** PUTs that carried a retention. */
  lockedPuts: number;
  /** PUTs to a locked bucket without one. */
  plainPuts: number;
  retentionPuts: number;
  versionDeletes: number;
  refusedVersionDeletes: number;
  deleteMarkers: number;
  /** Keys of PUTs without retention (the exempt ones, we expect). */
  plainKeys: string[];
}

function xmlEscape(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function error(status: number, code: string, message: string): Answer {
  const xml = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message><RequestId>emu</RequestId></Error>`;
  return { status, headers: { 'content-type': 'application/xml' }, body: Buffer.from(xml) };
}

function xmlAnswer(xml: string): Answer {
  return {
    status: 200,
    headers: { 'content-type': 'application/xml' },
    body: Buffer.from(`<?xml version="1.0" encoding="UTF-8"?>\n${xml}`),
  };
}

const tag = (xml: string, name: string): string | undefined =>
  new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml)?.[1];

function unescapeXml(s: string): string {
  return s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&#(\d+);/g, (_m, d: string) => String.fromCharCode(Number(d)))
    .replace(/&amp;/g, '&');
}

export class ObjectLockEmulator {
  private readonly buckets = new Map<string, Bucket>();
  readonly stats: ObjectLockStats = {
    lockedPuts: 0,
    plainPuts: 0,
    retentionPuts: 0,
    versionDeletes: 0,
    refusedVersionDeletes: 0,
    deleteMarkers: 0,
    plainKeys: [],
  };
  /** ListObjectVersions page size (AWS: 1000). */
  maxKeys: number;

  constructor(opts: { lockedBuckets?: string[]; maxKeys?: number } = {}) {
    for (const b of opts.lockedBuckets ?? []) this.buckets.set(b, { keys: new Map() });
    this.maxKeys = opts.maxKeys ?? 1000;
  }

  /** Every version of `key` in `bucket`, newest first (copies). */
  versions(bucket: string, key: string): Version[] {
    return (this.buckets.get(bucket)?.keys.get(key) ?? []).map((v) => ({ ...v }));
  }

  /** Every key in `bucket` with its versions. */
  allKeys(bucket: string): Map<string, Version[]> {
    return new Map(
      [...(this.buckets.get(bucket)?.keys ?? new Map<string, Version[]>())].map(([k, v]) => [
        k,
        v.map((x) => ({ ...x })),
      ]),
    );
  }

  /**
   * Answers a request itself, or forwards it (`forward`) and records what it changed. `url` is
   * the request's path and query (path-style: /bucket/key?query).
   */
  async handle(
    method: string,
    url: string,
    headers: IncomingHttpHeaders,
    body: Buffer,
    forward: () => Promise<Answer>,
  ): Promise<Answer> {
    const u = new URL(url, 'http://x');
    const parts = u.pathname.split('/').slice(1);
    const bucketName = decodeURIComponent(parts[0] ?? '');
    const key = parts.slice(1).map(decodeURIComponent).join('/');
    const q = u.searchParams;
    const bucket = this.buckets.get(bucketName);

    if (key === '') {
      if (method === 'PUT' && [...q.keys()].length === 0) {
        const a = await forward();
        if (a.status < 300 && String(headers['x-amz-bucket-object-lock-enabled']).toLowerCase() === 'true')
          this.buckets.set(bucketName, bucket ?? { keys: new Map() });
        return a;
      }
      if (method === 'GET' && q.has('object-lock')) {
        if (!bucket)
          return error(
            404,
            'ObjectLockConfigurationNotFoundError',
            'Object Lock configuration does not exist for this bucket',
          );
        return xmlAnswer(
          '<ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>',
        );
      }
      if (bucket && method === 'GET' && q.has('versions')) return this.listVersions(bucketName, bucket, q);
      if (bucket && method === 'POST' && q.has('delete'))
        return this.deleteObjects(bucket, headers, body, forward);
      return forward();
    }

    const lockMode = headers['x-amz-object-lock-mode'];
    if (method === 'PUT' && !q.has('retention') && !q.has('uploadId') && !q.has('uploads')) {
      let lock: Version['lock'];
      if (lockMode !== undefined || headers['x-amz-object-lock-retain-until-date'] !== undefined) {
        if (!bucket) return error(400, 'InvalidRequest', 'Bucket is missing Object Lock Configuration');
        const md5 = headers['content-md5'];
        if (typeof md5 !== 'string' && !Object.keys(headers).some((h) => h.startsWith('x-amz-checksum-')))
          return error(
            400,
            'InvalidRequest',
            'Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object requests with Object Lock parameters',
          );
        if (typeof md5 === 'string' && createHash('md5').update(body).digest('base64') !== md5)
          return error(400, 'BadDigest', 'The Content-MD5 you specified did not match what we received.');
        const until = Date.parse(String(headers['x-amz-object-lock-retain-until-date']));
        if (lockMode !== 'GOVERNANCE' && lockMode !== 'COMPLIANCE')
          return error(400, 'InvalidArgument', `Unknown wormMode directive: ${String(lockMode)}`);
        if (!Number.isFinite(until) || until <= Date.now())
          return error(400, 'InvalidArgument', 'The retain until date must be in the future!');
        lock = { mode: lockMode, untilMs: until };
      }
      const a = await forward();
      if (bucket && a.status < 300) {
        const id = randomBytes(12).toString('hex');
        this.push(bucket, key, {
          id,
          modifiedMs: Date.now(),
          sizeBytes: body.length,
          marker: false,
          ...(lock ? { lock } : {}),
        });
        if (lock) this.stats.lockedPuts++;
        else {
          this.stats.plainPuts++;
          this.stats.plainKeys.push(key);
        }
        a.headers['x-amz-version-id'] = id;
      }
      return a;
    }
    if (!bucket) return forward();

    if (q.has('retention')) {
      const current = bucket.keys.get(key)?.[0];
      if (!current) return error(404, 'NoSuchKey', 'The specified key does not exist.');
      if (current.marker)
        return error(405, 'MethodNotAllowed', 'The specified method is not allowed against this resource.');
      if (method === 'GET') {
        if (!current.lock)
          return error(
            404,
            'NoSuchObjectLockConfiguration',
            'The specified object does not have a ObjectLock configuration',
          );
        return xmlAnswer(
          `<Retention xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Mode>${current.lock.mode}</Mode><RetainUntilDate>${new Date(current.lock.untilMs).toISOString()}</RetainUntilDate></Retention>`,
        );
      }
      if (method !== 'PUT') return forward();
      if (
        typeof headers['content-md5'] !== 'string' &&
        !Object.keys(headers).some((h) => h.startsWith('x-amz-checksum-'))
      )
        return error(400, 'InvalidRequest', 'Missing required header for this request: Content-MD5');
      const xml = body.toString('utf8');
      const mode = tag(xml, 'Mode');
      const until = Date.parse(tag(xml, 'RetainUntilDate') ?? '');
      if ((mode !== 'GOVERNANCE' && mode !== 'COMPLIANCE') || !Number.isFinite(until))
        return error(400, 'MalformedXML', 'The XML you provided was not well-formed');
      const old = current.lock;
      const bypass = String(headers['x-amz-bypass-governance-retention']).toLowerCase() === 'true';
      if (old && old.untilMs > Date.now()) {
        if (old.mode === 'COMPLIANCE' && (mode !== 'COMPLIANCE' || until < old.untilMs))
          return error(403, 'AccessDenied', 'Access Denied because object protected by object lock.');
        if (old.mode === 'GOVERNANCE' && until < old.untilMs && !bypass)
          return error(403, 'AccessDenied', 'Access Denied because object protected by object lock.');
      }
      current.lock = { mode, untilMs: until };
      this.stats.retentionPuts++;
      return { status: 200, headers: {}, body: Buffer.alloc(0) };
    }

    if (method === 'DELETE') {
      const versionId = q.get('versionId');
      if (versionId === null) {
        const a = await forward();
        if (a.status < 300) {
          const id = this.addMarker(bucket, key);
          a.headers['x-amz-delete-marker'] = 'true';
          a.headers['x-amz-version-id'] = id;
        }
        return a;
      }
      const r = this.deleteVersion(bucket, key, versionId, headers);
      if (r === 'ok')
        return { status: 204, headers: { 'x-amz-version-id': versionId }, body: Buffer.alloc(0) };
      if (r === 'locked')
        return error(403, 'AccessDenied', 'Access Denied because object protected by object lock.');
      return error(501, 'NotImplemented', 'emulator: this delete would bring back an older version');
    }
    return forward();
  }

  private push(bucket: Bucket, key: string, v: Version): void {
    const list = bucket.keys.get(key);
    if (list) list.unshift(v);
    else bucket.keys.set(key, [v]);
  }

  private addMarker(bucket: Bucket, key: string): string {
    const id = randomBytes(12).toString('hex');
    this.push(bucket, key, { id, modifiedMs: Date.now(), sizeBytes: 0, marker: true });
    this.stats.deleteMarkers++;
    return id;
  }

  private deleteVersion(
    bucket: Bucket,
    key: string,
    versionId: string,
    headers: IncomingHttpHeaders,
  ): 'ok' | 'locked' | 'unsupported' {
    const list = bucket.keys.get(key);
    const at = list?.findIndex((v) => v.id === versionId) ?? -1;
    if (!list || at < 0) return 'ok';
    const v = list[at]!;
    const bypass = String(headers['x-amz-bypass-governance-retention']).toLowerCase() === 'true';
    if (v.lock && v.lock.untilMs > Date.now() && !(v.lock.mode === 'GOVERNANCE' && bypass)) {
      this.stats.refusedVersionDeletes++;
      return 'locked';
    }
    // The current version, or a latest marker with a version behind it: the older one would
    // become current, and the upstream server has no bytes for it.
    if (at === 0 && (!v.marker || list.slice(1).some((x) => !x.marker))) return 'unsupported';
    list.splice(at, 1);
    if (list.length === 0) bucket.keys.delete(key);
    this.stats.versionDeletes++;
    return 'ok';
  }

  private async deleteObjects(
    bucket: Bucket,
    headers: IncomingHttpHeaders,
    body: Buffer,
    forward: () => Promise<Answer>,
  ): Promise<Answer> {
    const xml = body.toString('utf8');
    const objects = [...xml.matchAll(/<Object>([\s\S]*?)<\/Object>/g)].map((m) => ({
      key: unescapeXml(tag(m[1]!, 'Key') ?? ''),
      versionId: tag(m[1]!, 'VersionId'),
    }));
    const quiet = tag(xml, 'Quiet') === 'true';
    const withVersions = objects.filter((o) => o.versionId !== undefined);
    if (withVersions.length === 0) {
      const a = await forward();
      if (a.status < 300) for (const o of objects) this.addMarker(bucket, o.key);
      return a;
    }
    if (withVersions.length !== objects.length)
      return error(
        501,
        'NotImplemented',
        'emulator: a DeleteObjects mixing keys with and without version ids',
      );
    const out: string[] = [];
    for (const o of objects) {
      const r = this.deleteVersion(bucket, o.key, o.versionId!, headers);
      const ids = `<Key>${xmlEscape(o.key)}</Key><VersionId>${xmlEscape(o.versionId!)}</VersionId>`;
      if (r === 'ok') {
        if (!quiet) out.push(`<Deleted>${ids}</Deleted>`);
      } else if (r === 'locked')
        out.push(
          `<Error>${ids}<Code>AccessDenied</Code><Message>Access Denied because object protected by object lock.</Message></Error>`,
        );
      else
        out.push(
          `<Error>${ids}<Code>NotImplemented</Code><Message>emulator: would bring back an older version</Message></Error>`,
        );
    }
    return xmlAnswer(
      `<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">${out.join('')}</DeleteResult>`,
    );
  }

  private listVersions(name: string, bucket: Bucket, q: URLSearchParams): Answer {
    const prefix = q.get('prefix') ?? '';
    const keyMarker = q.get('key-marker');
    const versionMarker = q.get('version-id-marker');
    const max = Math.min(this.maxKeys, Number(q.get('max-keys') ?? 1000) || 1000);
    const flat: Array<{ key: string; v: Version; latest: boolean }> = [];
    for (const key of [...bucket.keys.keys()].filter((k) => k.startsWith(prefix)).sort())
      bucket.keys.get(key)!.forEach((v, i) => flat.push({ key, v, latest: i === 0 }));
    let start = 0;
    if (keyMarker !== null) {
      const exact =
        versionMarker === null ? -1 : flat.findIndex((f) => f.key === keyMarker && f.v.id === versionMarker);
      start = exact >= 0 ? exact + 1 : flat.findIndex((f) => f.key > keyMarker);
      if (start < 0) start = flat.length;
    }
    const page = flat.slice(start, start + max);
    const truncated = start + max < flat.length;
    const last = page[page.length - 1];
    const items = page.map(({ key, v, latest }) => {
      const common = `<Key>${xmlEscape(key)}</Key><VersionId>${v.id}</VersionId><IsLatest>${latest}</IsLatest><LastModified>${new Date(v.modifiedMs).toISOString()}</LastModified>`;
      return v.marker
        ? `<DeleteMarker>${common}</DeleteMarker>`
        : `<Version>${common}<ETag>"${v.id}"</ETag><Size>${v.sizeBytes}</Size><StorageClass>STANDARD</StorageClass></Version>`;
    });
    return xmlAnswer(
      `<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>${xmlEscape(name)}</Name><Prefix>${xmlEscape(prefix)}</Prefix><MaxKeys>${max}</MaxKeys><IsTruncated>${truncated}</IsTruncated>` +
        (truncated && last
          ? `<NextKeyMarker>${xmlEscape(last.key)}</NextKeyMarker><NextVersionIdMarker>${last.v.id}</NextVersionIdMarker>`
          : '') +
        `${items.join('')}</ListVersionsResult>`,
    );
  }
}
