import { open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * `--metrics-file`: a Prometheus text-format file (exposition format 0.0.4) for node_exporter's
 * textfile collector. A run replaces its own series (same name and labels) and keeps every other
 * series already in the file (other VMs, other commands); the file is written as a whole to a
 * temporary name in the same directory and renamed over the old one, under a lock file, so the
 * collector never reads half a file and two runs on one host do not lose each other's series.
 */

export type Labels = Record<string, string>;

export interface Family {
  name: string;
  help: string;
  type: 'gauge' | 'counter' | 'untyped';
  /** Samples by their canonical label string. */
  samples: Map<string, { labels: Labels; value: number }>;
}

export type Metrics = Map<string, Family>;

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A label value as the exposition format writes it: backslash, double quote and newline escaped. */
export function escapeLabelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

export function labelKey(labels: Labels): string {
  return Object.keys(labels)
    .sort()
    .map((k) => `${k}="${escapeLabelValue(labels[k]!)}"`)
    .join(',');
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

export function formatMetrics(m: Metrics): string {
  const out: string[] = [];
  for (const f of [...m.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    if (f.samples.size === 0) continue;
    out.push(`# HELP ${f.name} ${escapeHelp(f.help)}`, `# TYPE ${f.name} ${f.type}`);
    for (const [key, s] of [...f.samples].sort(([a], [b]) => a.localeCompare(b)))
      out.push(`${f.name}${key ? `{${key}}` : ''} ${formatValue(s.value)}`);
  }
  return out.length ? `${out.join('\n')}\n` : '';
}

/** Error of a metrics file that is not in the text format (the run then starts the file afresh). */
export class MetricsParseError extends Error {}

/** Parses the text format as formatMetrics writes it (samples without timestamps, simple families). */
export function parseMetrics(text: string): Metrics {
  const m: Metrics = new Map();
  const family = (name: string): Family => {
    let f = m.get(name);
    if (!f) {
      f = { name, help: '', type: 'untyped', samples: new Map() };
      m.set(name, f);
    }
    return f;
  };
  text.split('\n').forEach((line, i) => {
    const bad = (why: string): MetricsParseError => new MetricsParseError(`line ${i + 1}: ${why}`);
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const h = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!h) return; // a plain comment
      if (!NAME.test(h[2]!)) throw bad(`bad metric name '${h[2]}'`);
      const f = family(h[2]!);
      if (h[1] === 'HELP') f.help = h[3]!.replace(/\\(\\|n)/g, (_, c: string) => (c === 'n' ? '\n' : '\\'));
      else if (h[3] === 'gauge' || h[3] === 'counter' || h[3] === 'untyped') f.type = h[3];
      else throw bad(`unsupported type '${h[3]}'`);
      return;
    }
    const s = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!s) throw bad('not a sample');
    const labels = parseLabels(s[2] ?? '', bad);
    const value = s[3] === '+Inf' ? Infinity : s[3] === '-Inf' ? -Infinity : Number(s[3]);
    if (Number.isNaN(value) && s[3] !== 'NaN') throw bad(`bad value '${s[3]}'`);
    family(s[1]!).samples.set(labelKey(labels), { labels, value });
  });
  return m;
}

function parseLabels(text: string, bad: (why: string) => Error): Labels {
  const labels: Labels = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf('="', i);
    if (eq < 0) throw bad('bad label');
    const name = text.slice(i, eq);
    if (!LABEL_NAME.test(name)) throw bad(`bad label name '${name}'`);
    let j = eq + 2;
    let v = '';
    for (;;) {
      if (j >= text.length) throw bad('unterminated label value');
      const c = text[j]!;
      if (c === '"') break;
      if (c === '\\') {
        const n = text[j + 1];
        if (n === '\\') v += '\\';
        else if (n === '"') v += '"';
        else if (n === 'n') v += '\n';
        else throw bad('bad escape in a label value');
        j += 2;
      } else {
        v += c;
        j++;
      }
    }
    labels[name] = v;
    i = j + 1;
    if (text[i] === ',') i++;
    else if (i < text.length) throw bad('bad label list');
  }
  return labels;
}

/** One value to set: a family (created with `help`/`type` when new) and a series in it. */
export interface MetricUpdate {
  name: string;
  help: string;
  type: 'gauge' | 'counter';
  labels: Labels;
  value: number;
}

export function applyUpdates(m: Metrics, updates: MetricUpdate[]): void {
  for (const u of updates) {
    let f = m.get(u.name);
    if (!f) {
      f = { name: u.name, help: u.help, type: u.type, samples: new Map() };
      m.set(u.name, f);
    }
    f.help = u.help;
    f.type = u.type;
    f.samples.set(labelKey(u.labels), { labels: u.labels, value: u.value });
  }
}

/** A lock file older than this is left by a process that died (a write takes milliseconds). */
const STALE_LOCK_MS = 60_000;
const LOCK_WAIT_MS = 15_000;

/**
 * Reads the file (a missing file is empty; one that does not parse is reported through `warn` and
 * replaced), applies the updates and writes it atomically (tmp + rename), under `FILE.lock`.
 */
export async function updateMetricsFile(
  file: string,
  updates: MetricUpdate[],
  warn: (m: string) => void,
): Promise<void> {
  const lock = join(dirname(file), `.${basename(file)}.lock`);
  await acquire(lock);
  try {
    let m: Metrics = new Map();
    try {
      m = parseMetrics(await readFile(file, 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT')
        warn(`the metrics file ${file} could not be read (${(err as Error).message}): writing it afresh`);
    }
    applyUpdates(m, updates);
    // node_exporter reads only *.prom files: the temporary name ends otherwise.
    const tmp = join(dirname(file), `.${basename(file)}.${process.pid}.tmp`);
    try {
      await writeFile(tmp, formatMetrics(m), { mode: 0o644 });
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw err;
    }
  } finally {
    await rm(lock, { force: true });
  }
}

async function acquire(lock: string): Promise<void> {
  const until = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      const h = await open(lock, 'wx', 0o644);
      await h.writeFile(`${process.pid}\n`);
      await h.close();
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const st = await stat(lock).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > STALE_LOCK_MS) {
      await rm(lock, { force: true });
      continue;
    }
    if (Date.now() > until) throw new Error(`${lock} is held by another vmvault (remove it if none runs)`);
    await new Promise((r) => setTimeout(r, 50 + Math.random() * 100));
  }
}
