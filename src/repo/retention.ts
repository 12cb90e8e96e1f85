/**
 * Retention policies with restic's `forget` semantics (docs/retention.md "Retention (forget)").
 *
 * Pure: no I/O, no clock (the caller passes `now`). `applyRetention` decides, for one group of
 * snapshots (vmvault groups per VM), which are kept and why; the caller removes the others.
 *
 * The rules, as restic (internal/data/snapshot_policy.go) applies them:
 *  - snapshots are evaluated newest first; every rule sees every snapshot and a snapshot is kept if
 *    any rule keeps it (the reasons are ORed and all listed);
 *  - `last`: the N newest snapshots;
 *  - `hourly`/`daily`/`weekly`/`monthly`/`yearly`: calendar buckets (local hour, local date, ISO
 *    week, month, year); the newest snapshot of each bucket is kept, for the N newest buckets that
 *    hold a snapshot (empty buckets do not count); `Infinity` keeps every bucket ("unlimited");
 *  - if a count rule still has counts left when the oldest snapshot is reached, the oldest snapshot
 *    is kept too (reason `oldest daily snapshot` when its bucket was already represented), which
 *    keeps the longest history the counts allow;
 *  - `within`: every snapshot strictly newer than (newest snapshot time − duration), where the
 *    newest snapshot ignores snapshots dated in the future of `now`;
 *  - `withinHourly` ... `withinYearly`: one snapshot per bucket, for the buckets inside the window;
 *  - `tags`: every snapshot carrying one of the tags (not counted); `''` matches untagged snapshots;
 *  - a protected snapshot is always kept (vmvault's addition), and it still takes part in every
 *    rule like any other snapshot.
 *
 * Calendar fields are read in one IANA time zone (`opts.timeZone`, default the process's), with
 * Intl.DateTimeFormat, so a day bucket is a local calendar date whatever the DST offset, and a
 * duration's years/months/days move along the local calendar (restic's time.AddDate), its hours
 * along absolute time.
 */
import { printable, UsageError, VmvaultError } from '../util/index.js';

/** A --keep-within duration: whole years, months, days and hours (restic's `2y5m7d3h`). */
export interface DurationSpec {
  years: number;
  months: number;
  days: number;
  hours: number;
}

export interface RetentionPolicy {
  /** Counts: a non-negative integer, or Infinity for restic's "unlimited". 0/undefined: rule off. */
  last?: number;
  hourly?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
  /** Keep every snapshot newer than the newest snapshot's time minus this duration. */
  within?: DurationSpec;
  /** restic's --keep-within-hourly ...: one snapshot per bucket inside the window. */
  withinHourly?: DurationSpec;
  withinDaily?: DurationSpec;
  withinWeekly?: DurationSpec;
  withinMonthly?: DurationSpec;
  withinYearly?: DurationSpec;
  /** Keep snapshots carrying ANY of these tags; '' keeps untagged snapshots. */
  tags?: string[];
}

export interface RetentionItem {
  id: string;
  /** The snapshot's time. */
  time: Date;
  tags: string[];
  protected?: boolean;
}

export interface RetentionDecision {
  id: string;
  keep: boolean;
  /** Why it is kept, in restic's words ('last snapshot', 'daily snapshot', 'within 7d', ...). Empty when removed. */
  reasons: string[];
}

export interface RetentionOptions {
  /** The time the policy is applied at: snapshots after it are "in the future". */
  now: Date;
  /** IANA zone for calendar buckets; default the process's (TZ). */
  timeZone?: string;
}

const COUNT_RULES = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
const WITHIN_RULES = [
  'withinHourly',
  'withinDaily',
  'withinWeekly',
  'withinMonthly',
  'withinYearly',
] as const;
type WithinRule = (typeof WITHIN_RULES)[number];
type Bucket = 'hourly' | 'daily' | 'weekly' | 'monthly' | 'yearly';

const WITHIN_BUCKET: Record<WithinRule, Bucket> = {
  withinHourly: 'hourly',
  withinDaily: 'daily',
  withinWeekly: 'weekly',
  withinMonthly: 'monthly',
  withinYearly: 'yearly',
};

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
/** The largest magnitude a JS Date holds. */
const MAX_TIME_MS = 8.64e15;

// ---------------------------------------------------------------------------------------------
// Durations

/**
 * Parses restic's duration syntax: one or more `<digits><unit>` with unit y, m, d or h, in any
 * order, each unit at most once (`2y5m7d3h`, `36h`, `1m`). Surrounding whitespace is ignored.
 */
export function parseDuration(s: string): DurationSpec {
  const hint = "use years, months, days and hours such as 2y5m7d3h (units y, m, d, h; no 'w': use 7d)";
  const text = s.trim();
  const shown = printable(s, 60);
  if (text === '') throw new UsageError('empty duration', hint);
  const d: DurationSpec = { years: 0, months: 0, days: 0, hours: 0 };
  const seen = new Set<string>();
  const token = /(\d+)(\D?)/y;
  let pos = 0;
  while (pos < text.length) {
    token.lastIndex = pos;
    const m = token.exec(text);
    if (!m) {
      const c = text[pos] === '-' ? "a negative number ('-')" : `'${printable(text[pos] ?? '', 8)}'`;
      throw new UsageError(`invalid duration '${shown}': ${c} where a number was expected`, hint);
    }
    const [, digits = '', unit = ''] = m;
    if (unit === '') throw new UsageError(`invalid duration '${shown}': no unit after ${digits}`, hint);
    const field = { y: 'years', m: 'months', d: 'days', h: 'hours' }[unit] as keyof DurationSpec | undefined;
    if (field === undefined) {
      const u = printable(unit, 8);
      throw new UsageError(`invalid duration '${shown}': unknown unit '${u}' after ${digits}`, hint);
    }
    if (seen.has(unit)) throw new UsageError(`invalid duration '${shown}': unit '${unit}' given twice`, hint);
    seen.add(unit);
    const n = Number(digits);
    if (!Number.isSafeInteger(n) || n > 1_000_000) {
      throw new UsageError(`invalid duration '${shown}': ${digits} is too large`, hint);
    }
    d[field] = n;
    pos = token.lastIndex;
  }
  return d;
}

/** restic's rendering: the non-zero fields in the order y, m, d, h (`2y5m7d3h`; `0h` when zero). */
export function formatDuration(d: DurationSpec): string {
  const s =
    (d.years ? `${d.years}y` : '') +
    (d.months ? `${d.months}m` : '') +
    (d.days ? `${d.days}d` : '') +
    (d.hours ? `${d.hours}h` : '');
  return s === '' ? '0h' : s;
}

function isZeroDuration(d: DurationSpec | undefined): boolean {
  return d === undefined || (d.years === 0 && d.months === 0 && d.days === 0 && d.hours === 0);
}

/**
 * A --keep-* count from the command line: a non-negative integer, or `unlimited` (Infinity).
 * `flag` names the option in the message.
 */
export function parseKeepCount(s: string, flag = '--keep-*'): number {
  const text = s.trim();
  if (text === 'unlimited') return Infinity;
  if (/^\d+$/.test(text)) {
    const n = Number(text);
    if (Number.isSafeInteger(n)) return n;
  }
  throw new UsageError(
    `invalid ${flag} value '${printable(s, 40)}'`,
    "give a number of snapshots (0 or more) or 'unlimited'",
  );
}

// ---------------------------------------------------------------------------------------------
// Policy

/** True when no rule is set: forgetting with it would remove everything, so callers refuse it. */
export function isEmptyPolicy(p: RetentionPolicy): boolean {
  for (const r of COUNT_RULES) if ((p[r] ?? 0) !== 0) return false;
  if (!isZeroDuration(p.within)) return false;
  for (const r of WITHIN_RULES) if (!isZeroDuration(p[r])) return false;
  return (p.tags ?? []).length === 0;
}

/** Checks counts and durations; throws UsageError naming the bad rule. */
export function validatePolicy(p: RetentionPolicy): void {
  for (const r of COUNT_RULES) {
    const n = p[r];
    if (n === undefined || n === Infinity) continue;
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new UsageError(
        `invalid keep-${r} count ${String(n)}`,
        "give a number of snapshots (0 or more) or 'unlimited'",
      );
    }
  }
  for (const r of ['within', ...WITHIN_RULES] as const) {
    const d = p[r];
    if (d === undefined) continue;
    for (const v of [d.years, d.months, d.days, d.hours]) {
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new UsageError(
          `invalid keep-${r} duration`,
          'durations are whole, non-negative numbers such as 7d',
        );
      }
    }
  }
}

/** One line saying what a policy keeps, after restic's "Applying Policy: ..." line. */
export function describePolicy(p: RetentionPolicy): string {
  const parts: string[] = [];
  const counts: string[] = [];
  for (const r of COUNT_RULES) {
    const n = p[r] ?? 0;
    if (n === 0) continue;
    const what = r === 'last' ? 'latest' : r;
    counts.push(n === Infinity ? `all ${what}` : `${n} ${what}`);
  }
  if (counts.length > 0) parts.push(`${counts.join(', ')} snapshots`);
  for (const r of WITHIN_RULES) {
    const d = p[r];
    if (!isZeroDuration(d) && d) parts.push(`${WITHIN_BUCKET[r]} snapshots within ${formatDuration(d)}`);
  }
  const tags = p.tags ?? [];
  if (tags.length > 0) parts.push(`all snapshots with tags ${tags.map((t) => `[${t}]`).join(' ')}`);
  if (!isZeroDuration(p.within) && p.within) {
    parts.push(`all snapshots within ${formatDuration(p.within)} of the newest`);
  }
  if (parts.length === 0) return 'keep nothing (empty policy)';
  return `keep ${parts.join(', ')} and every protected snapshot`;
}

// ---------------------------------------------------------------------------------------------
// Calendar in a time zone

interface LocalTime {
  year: number;
  month: number; // 1..12
  day: number;
  hour: number;
  minute: number;
  second: number;
  ms: number;
}

class ZoneCalendar {
  private readonly fmt: Intl.DateTimeFormat;
  readonly timeZone: string;

  constructor(timeZone: string | undefined) {
    try {
      this.fmt = new Intl.DateTimeFormat('en-US', {
        timeZone,
        hourCycle: 'h23',
        era: 'short',
        year: 'numeric',
        month: 'numeric',
        day: 'numeric',
        hour: 'numeric',
        minute: 'numeric',
        second: 'numeric',
      });
    } catch {
      throw new UsageError(
        `unknown time zone '${printable(timeZone ?? '', 60)}'`,
        'give an IANA zone name such as Europe/Berlin or UTC',
      );
    }
    this.timeZone = this.fmt.resolvedOptions().timeZone;
  }

  /** The wall-clock fields of instant `t` (ms since the epoch) in the zone. */
  local(t: number): LocalTime {
    const f: Record<string, string> = {};
    for (const p of this.fmt.formatToParts(t)) f[p.type] = p.value;
    let year = Number(f.year);
    if (f.era === 'BC' || f.era === 'B') year = 1 - year;
    return {
      year,
      month: Number(f.month),
      day: Number(f.day),
      hour: Number(f.hour),
      minute: Number(f.minute),
      second: Number(f.second),
      ms: ((t % 1000) + 1000) % 1000,
    };
  }

  /** The zone's offset from UTC at instant t, in ms. */
  offsetAt(t: number): number {
    return wallMs(this.local(t)) - t;
  }

  /**
   * The instant showing wall time `wall` (wall-clock fields as if UTC, in ms). Ambiguous wall times
   * (the repeated hour when clocks go back) take the earlier instant; wall times that do not exist
   * (skipped when clocks go forward) move forward by the gap, as if the earlier offset still held.
   */
  instantOf(wall: number): number {
    const before = this.offsetAt(wall - DAY_MS);
    const candidates = [before, this.offsetAt(wall), this.offsetAt(wall + DAY_MS)];
    let best: number | undefined;
    for (const o of candidates) {
      const t = wall - o;
      if (this.offsetAt(t) === o && (best === undefined || t < best)) best = t;
    }
    return best ?? wall - before;
  }
}

function utcMs(year: number, month1: number, day: number, h = 0, mi = 0, s = 0, ms = 0): number {
  const d = new Date(0);
  // setUTCFullYear, unlike Date.UTC, does not map years 0..99 to 1900..1999. Both normalise
  // overflowing months and days like Go's time.Date (Feb 31 is Mar 3 or Mar 2).
  d.setUTCFullYear(year, month1 - 1, day);
  d.setUTCHours(h, mi, s, ms);
  return d.getTime();
}

function wallMs(l: LocalTime): number {
  return utcMs(l.year, l.month, l.day, l.hour, l.minute, l.second, l.ms);
}

/** ISO 8601 week-numbering year and week of a calendar date (what Go's ISOWeek returns). */
export function isoWeek(year: number, month: number, day: number): { year: number; week: number } {
  const date = utcMs(year, month, day);
  const dow = (new Date(date).getUTCDay() + 6) % 7; // Monday 0 .. Sunday 6
  const thursday = date + (3 - dow) * DAY_MS;
  const isoYear = new Date(thursday).getUTCFullYear();
  const week = 1 + Math.floor((thursday - utcMs(isoYear, 1, 1)) / (7 * DAY_MS));
  return { year: isoYear, week };
}

function bucketKey(b: Bucket, l: LocalTime): number {
  switch (b) {
    case 'hourly':
      return l.year * 1_000_000 + l.month * 10_000 + l.day * 100 + l.hour;
    case 'daily':
      return l.year * 10_000 + l.month * 100 + l.day;
    case 'weekly': {
      const w = isoWeek(l.year, l.month, l.day);
      return w.year * 100 + w.week;
    }
    case 'monthly':
      return l.year * 100 + l.month;
    case 'yearly':
      return l.year;
  }
}

/**
 * The window's lower bound: `latest` moved back by the duration's years, months and days on the
 * local calendar (overflowing days roll over, as in Go's AddDate: Mar 31 − 1m is Mar 3), then by
 * its hours in absolute time. Snapshots strictly after it are inside.
 */
function windowStart(cal: ZoneCalendar, latest: number, d: DurationSpec): number {
  const l = cal.local(latest);
  const wall = utcMs(l.year - d.years, l.month - d.months, l.day - d.days, l.hour, l.minute, l.second, l.ms);
  if (!Number.isFinite(wall) || wall < -MAX_TIME_MS + 2 * DAY_MS) return -Infinity;
  const t = cal.instantOf(wall) - d.hours * HOUR_MS;
  // Beyond what a Date holds: the window covers everything there is.
  return Number.isFinite(t) && t >= -MAX_TIME_MS ? t : -Infinity;
}

// ---------------------------------------------------------------------------------------------
// The engine

/**
 * Applies `policy` to one group of snapshots. Returns one decision per item, newest first (ties in
 * time ordered by id). Throws UsageError for an invalid policy or time zone; an empty policy is
 * not refused here (everything but protected snapshots would be removed): callers check
 * `isEmptyPolicy` first, as restic does.
 */
export function applyRetention(
  items: RetentionItem[],
  policy: RetentionPolicy,
  opts: RetentionOptions,
): RetentionDecision[] {
  validatePolicy(policy);
  const cal = new ZoneCalendar(opts.timeZone);
  const now = opts.now.getTime();
  if (!Number.isFinite(now)) throw new VmvaultError('INVALID_TIME', 'retention: `now` is not a valid time');
  for (const it of items) {
    if (!Number.isFinite(it.time.getTime())) {
      throw new VmvaultError('INVALID_TIME', `snapshot ${printable(it.id, 16)} has no valid time`, {
        hint: 'run vmvault check on the repository',
      });
    }
  }

  const list = [...items].sort(
    (a, b) => b.time.getTime() - a.time.getTime() || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
  if (list.length === 0) return [];

  // The newest snapshot that is not in the future. With none, restic's "latest" is the zero time
  // and every snapshot is inside every window; `now` gives the same answer.
  let latest = -Infinity;
  for (const it of list) {
    const t = it.time.getTime();
    if (t < now && t > latest) latest = t;
  }
  if (latest === -Infinity) latest = now;

  const counters = COUNT_RULES.map((r) => ({
    rule: r,
    left: policy[r] ?? 0,
    last: undefined as number | undefined,
  }));
  const withins = WITHIN_RULES.filter((r) => !isZeroDuration(policy[r])).map((r) => {
    const d = policy[r] as DurationSpec;
    return {
      bucket: WITHIN_BUCKET[r],
      d,
      start: windowStart(cal, latest, d),
      last: undefined as number | undefined,
    };
  });
  const within = isZeroDuration(policy.within) ? undefined : (policy.within as DurationSpec);
  const withinStart = within ? windowStart(cal, latest, within) : 0;
  const tags = policy.tags ?? [];

  return list.map((it, nr) => {
    const reasons: string[] = [];
    const t = it.time.getTime();
    const oldest = nr === list.length - 1;
    const local = cal.local(t);

    if (it.protected === true) reasons.push('protected');

    for (const tag of tags) {
      const has = tag === '' ? it.tags.length === 0 : it.tags.includes(tag);
      if (has) reasons.push(`has tags [${tag}]`);
    }

    if (within && t > withinStart) reasons.push(`within ${formatDuration(within)}`);

    for (const c of counters) {
      if (c.left <= 0) continue;
      const key = c.rule === 'last' ? nr : bucketKey(c.rule, local);
      if (key !== c.last || oldest) {
        const base = `${c.rule} snapshot`;
        reasons.push(key === c.last ? `oldest ${base}` : base);
        c.last = key;
        c.left -= 1; // Infinity stays Infinity
      }
    }

    for (const w of withins) {
      if (!(t > w.start)) continue;
      const key = bucketKey(w.bucket, local);
      if (key !== w.last || oldest) {
        const base = `${w.bucket} within ${formatDuration(w.d)}`;
        reasons.push(key === w.last ? `oldest ${base}` : base);
        w.last = key;
      }
    }

    return { id: it.id, keep: reasons.length > 0, reasons };
  });
}
