import { UsageError } from './errors.js';
import { printable } from './names.js';

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
/** A year: longer spans are surely a typo (and would overflow nothing, but mean nothing). */
const MAX_SPAN_MS = 366 * 86_400_000;

/**
 * Parses a time span such as `30m`, `2h`, `1h30m`, `45s` or `1d` into milliseconds: one or more
 * `<digits><unit>`, units d, h, m (minutes), s, each at most once, largest first. Not restic's
 * retention durations (`forget --keep-within`, where `m` means months): this one measures a run.
 */
export function parseTimeSpan(text: string, what = 'duration'): number {
  const hint = 'use days, hours, minutes and seconds such as 30m, 2h, 1h30m or 45s (units d, h, m, s)';
  const shown = printable(text, 60);
  const s = text.trim();
  if (s === '') throw new UsageError(`empty ${what}`, hint);
  const token = /(\d+)([a-z]?)/y;
  const order = 'dhms';
  let last = -1;
  let ms = 0;
  let pos = 0;
  while (pos < s.length) {
    token.lastIndex = pos;
    const m = token.exec(s);
    if (!m)
      throw new UsageError(
        `invalid ${what} '${shown}': a number was expected at '${printable(s.slice(pos), 16)}'`,
        hint,
      );
    const [, digits = '', unit = ''] = m;
    if (unit === '') throw new UsageError(`invalid ${what} '${shown}': no unit after ${digits}`, hint);
    const at = order.indexOf(unit);
    if (at < 0) throw new UsageError(`invalid ${what} '${shown}': unknown unit '${unit}'`, hint);
    if (at <= last)
      throw new UsageError(`invalid ${what} '${shown}': units must appear once each, largest first`, hint);
    last = at;
    ms += Number(digits) * UNIT_MS[unit]!;
    if (!Number.isSafeInteger(ms) || ms > MAX_SPAN_MS)
      throw new UsageError(`invalid ${what} '${shown}': longer than a year`, hint);
    pos = token.lastIndex;
  }
  if (ms === 0) throw new UsageError(`invalid ${what} '${shown}': must be longer than zero`, hint);
  return ms;
}

/**
 * Parses an ISO 8601 date-time with a zone (`2026-11-20T22:00:00Z`, `2026-11-20T23:00+01:00`) or,
 * with `dateOnly`, also a date (`2026-11-20`: midnight UTC) into ms since the epoch; years
 * 1970–9999. Nothing else (Date.parse's other, locale-dependent forms are refused).
 */
export function parseIsoTime(v: string, flag: string, opts: { dateOnly?: boolean } = {}): number {
  const dateTime = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/.test(v);
  const date = opts.dateOnly === true && /^\d{4}-\d{2}-\d{2}$/.test(v);
  const t = dateTime || date ? new Date(date ? `${v}T00:00:00Z` : v) : undefined;
  if (t === undefined || Number.isNaN(t.getTime()) || t.getUTCFullYear() < 1970 || t.getUTCFullYear() > 9999)
    throw new UsageError(
      `invalid ${flag} '${printable(v, 60)}'`,
      `give an ISO 8601 ${opts.dateOnly ? 'date (2026-11-20) or ' : ''}date-time with a zone, e.g. 2026-11-20T22:00:00Z or 2026-11-20T23:00:00+01:00`,
    );
  return t.getTime();
}
