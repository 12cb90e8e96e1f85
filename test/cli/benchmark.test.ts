import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir } from '../helpers/tmp.js';

const tmp = await makeTmpDir('vmvault-benchmark-');
afterAll(() => tmp.cleanup());

const env = (password = 'bench pass'): NodeJS.ProcessEnv => ({
  VMVAULT_TEST_KDF_N: '16384',
  VMVAULT_PASSWORD: password,
  VMVAULT_PASSWORD_FILE: '',
  VMVAULT_PASSWORD_COMMAND: '',
});

interface Figure {
  step: string;
  label: string;
  threads: number;
  bytes: number;
  seconds: number;
  mbPerSec: number;
  ratio?: number;
}
interface Result {
  cpus: number;
  cpuModel: string;
  workers: number;
  chunkSizeBytes: number;
  idFunction: string;
  compressionLevel: number;
  encrypted: boolean;
  storage?: { location: string; objectBytes: number; concurrency: number };
  figures: Figure[];
}

/** Every figure is a positive rate; the CPU steps are measured on one thread and on all workers. */
function expectFigures(r: Result, steps: string[]): void {
  expect(r.cpus).toBeGreaterThan(0);
  expect(r.workers).toBeGreaterThan(0);
  expect([...new Set(r.figures.map((f) => f.step))]).toEqual(steps);
  for (const f of r.figures) {
    expect(f.mbPerSec, `${f.step} ×${f.threads}`).toBeGreaterThan(0);
    expect(f.bytes).toBeGreaterThan(0);
    expect(f.seconds).toBeGreaterThan(0);
    expect(f.label.length).toBeGreaterThan(0);
  }
  for (const s of steps.filter((s) => s !== 'write' && s !== 'read')) {
    const threads = r.figures.filter((f) => f.step === s).map((f) => f.threads);
    expect(threads).toEqual(r.workers > 1 ? [1, r.workers] : [1]);
  }
  const compress = r.figures.find((f) => f.step === 'compress');
  if (compress) expect(compress.ratio).toBeGreaterThan(1);
}

/** Files under the repository's tmp/ (the local backend's temporary files and benchmark objects). */
async function tmpFiles(repo: string): Promise<string[]> {
  return readdir(join(repo, 'tmp'), { recursive: true }).catch(() => []);
}

const CPU = ['hash', 'compress', 'decompress', 'encrypt', 'decrypt'];

describe('vmvault benchmark', () => {
  it('without a repository: the CPU figures with a new repository’s settings, as a table and as JSON', async () => {
    const t = await runCli(['benchmark', '--seconds', '0.05']);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/^CPUs +\d+ /m);
    expect(t.stdout).toContain('of a new repository');
    for (const s of CPU) expect(t.stdout).toMatch(new RegExp(`^${s} .* MB/s`, 'm'));
    expect(t.stdout).not.toMatch(/^write /m);

    const j = await runCli(['benchmark', '--seconds', '0.05', '--json']);
    expect(j.code, j.stderr).toBe(0);
    const r = JSON.parse(j.stdout) as Result;
    expectFigures(r, CPU);
    expect(r.storage).toBeUndefined();
    expect(r.encrypted).toBe(true);
    expect(r.idFunction).toBe('blake3-256-keyed');
  });

  it('with a local repository: its compression level, write and read figures, no object left in tmp/', async () => {
    const repo = join(tmp.dir, 'plain');
    const init = await runCli([
      'init',
      repo,
      '--encryption',
      'none',
      '--compression',
      'zstd:3',
      '--pack-size',
      '4M',
    ]);
    expect(init.code, init.stderr).toBe(0);
    const before = await tmpFiles(repo);
    const j = await runCli(['benchmark', '-r', repo, '--seconds', '0.05', '--json']);
    expect(j.code, j.stderr).toBe(0);
    const r = JSON.parse(j.stdout) as Result;
    expectFigures(r, [...CPU, 'write', 'read']);
    expect(r.compressionLevel).toBe(3);
    expect(r.encrypted).toBe(false);
    expect(r.idFunction).toBe('blake3-256');
    expect(r.figures.find((f) => f.step === 'compress')!.label).toBe('zstd level 3');
    expect(r.storage).toEqual({
      location: expect.any(String),
      objectBytes: 4 * 1024 * 1024,
      concurrency: r.workers,
    });
    expect(r.figures.find((f) => f.step === 'write')!.bytes % (4 * 1024 * 1024)).toBe(0);
    expect(await tmpFiles(repo)).toEqual(before);

    const t = await runCli(['benchmark', '-r', repo, '--seconds', '0.05']);
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/^write .* MB\/s$/m);
    expect(t.stdout).toMatch(/^read .* MB\/s$/m);
    expect(await tmpFiles(repo)).toEqual(before);
  });

  it('with an encrypted repository: keyed hashing, the password is needed', async () => {
    const repo = join(tmp.dir, 'enc');
    const init = await runCli(['init', repo, '--encryption', 'aes-256-gcm', '--compression', 'none'], {
      env: env(),
    });
    expect(init.code, init.stderr).toBe(0);
    const j = await runCli(['benchmark', '-r', repo, '--seconds', '0.05', '--json'], { env: env() });
    expect(j.code, j.stderr).toBe(0);
    const r = JSON.parse(j.stdout) as Result;
    // No compression in this repository: no compression figures.
    expectFigures(r, ['hash', 'encrypt', 'decrypt', 'write', 'read']);
    expect(r.encrypted).toBe(true);
    expect(r.compressionLevel).toBe(0);
    expect(r.figures[0]!.label).toContain('keyed');
    expect(await tmpFiles(repo)).toEqual([]);

    const wrong = await runCli(['benchmark', '-r', repo, '--seconds', '0.05'], { env: env('wrong') });
    expect(wrong.code).toBe(12);
    expectOneLineError(wrong);
  });

  it('bad input: a missing repository, a bad --seconds', async () => {
    const missing = await runCli(['benchmark', '-r', join(tmp.dir, 'nope'), '--seconds', '0.05']);
    expect(missing.code).toBe(10);
    expectOneLineError(missing);
    const bad = await runCli(['benchmark', '--seconds', 'soon']);
    expect(bad.code).toBe(2);
    expectOneLineError(bad);
  });
});
