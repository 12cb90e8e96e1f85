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
