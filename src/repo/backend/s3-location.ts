import { UsageError } from '../../util/index.js';

/**
 * Where an S3 repository lives, parsed from what users type (docs/s3.md):
 *   s3:https://HOST[:PORT]/BUCKET[/PREFIX]   any S3-compatible endpoint, path-style addressing
 *   s3:http://HOST[:PORT]/BUCKET[/PREFIX]    the same without TLS (a server on loopback, a LAN)
 *   s3://BUCKET[/PREFIX]                     AWS itself: virtual-hosted style, region from the
 *                                            environment, the profile, or the bucket's redirect
 */
export interface S3Location {
  /** http(s)://host[:port] without a trailing slash; undefined: AWS. */
  endpoint?: string;
  bucket: string;
  /** Key prefix without leading or trailing '/', '' for the bucket's root. */
  prefix: string;
  /** Path-style requests (every custom endpoint); virtual-hosted for AWS. */
  pathStyle: boolean;
}

const HINT =
  'write s3:https://HOST[:PORT]/BUCKET[/PREFIX] for an S3-compatible server or s3://BUCKET[/PREFIX] for AWS';

/** Bucket names as S3-compatible servers take them (AWS's rules are stricter: lower case only). */
const BUCKET = /^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$/;
/** One prefix segment: printable, no separators or dot-only names. */
const SEGMENT = /^[A-Za-z0-9._~+=,@-]+$/;

export function isS3Location(location: string): boolean {
  return location.startsWith('s3:');
}

export function parseS3Location(location: string): S3Location {
  let endpoint: string | undefined;
  let path: string;
  if (location.startsWith('s3://')) {
    path = location.slice('s3://'.length);
  } else if (/^s3:https?:\/\//i.test(location)) {
    let url: URL;
    try {
      url = new URL(location.slice('s3:'.length));
    } catch {
      throw new UsageError(`'${location}' is not a valid S3 location`, HINT);
    }
    if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '')
      throw new UsageError(
        `'${location}' carries credentials, a query or a fragment`,
        'give credentials with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE, not in the location',
      );
    endpoint = `${url.protocol}//${url.host}`;
    path = url.pathname.replace(/^\/+/, '');
  } else {
    throw new UsageError(`'${location}' is not a valid S3 location`, HINT);
  }
  const parts = path.split('/').filter((p) => p !== '');
  const bucket = parts.shift();
  if (bucket === undefined) throw new UsageError(`'${location}' names no bucket`, HINT);
  if (!BUCKET.test(bucket) || bucket.includes('..'))
    throw new UsageError(
      `'${bucket}' is not a valid bucket name`,
      'a bucket name has 3 to 63 letters, digits, dots, dashes or underscores',
    );
  for (const p of parts)
    if (!SEGMENT.test(p) || /^\.+$/.test(p))
      throw new UsageError(
        `'${p}' is not a valid part of a key prefix in '${location}'`,
        'use letters, digits and ._~+=,@- in the prefix',
      );
  return {
    ...(endpoint === undefined ? {} : { endpoint }),
    bucket,
    prefix: parts.join('/'),
    pathStyle: endpoint !== undefined,
  };
}

/** The canonical spelling of a location (messages, `location`). */
export function formatS3Location(l: S3Location): string {
  const tail = l.prefix === '' ? l.bucket : `${l.bucket}/${l.prefix}`;
  return l.endpoint === undefined ? `s3://${tail}` : `s3:${l.endpoint}/${tail}`;
}
