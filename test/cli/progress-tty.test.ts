import { afterEach, describe, expect, it, vi } from 'vitest';
import { makeProgress } from '../../src/cli/progress-tty.js';

const MiB = 1024 * 1024;

function fakeStream(isTTY: boolean): NodeJS.WriteStream & { text: () => string } {
  let out = '';
  return {
    isTTY,
    columns: 120,
    write(s: string) {
      out += s;
      return true;
    },
    text: () => out,
  } as unknown as NodeJS.WriteStream & { text: () => string };
}

describe('backup progress shows bytes read and their rate, not the position over time', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('an incremental that reads 3 MiB of a 4 GiB disk in 2 s reports 1.5 MiB/s (TTY and not)', () => {
    vi.useFakeTimers();
    for (const tty of [true, false]) {
      vi.setSystemTime(new Date('2026-01-01T00:00:00Z'));
      const s = fakeStream(tty);
      const p = makeProgress('web/vda', s, false, { reads: true });
      p.start('', 4096 * MiB);
      p.advance(4093 * MiB, 0); // unchanged chunks: reused, not read
      vi.setSystemTime(new Date('2026-01-01T00:00:02Z'));
      p.advance(3 * MiB, 3 * MiB);
      p.done();
      const last = s
        .text()
        .split(/[\r\n]/)
        .filter(Boolean)
        .pop()!
        .trimEnd();
      if (tty)
        expect(last).toMatch(/^web\/vda \[#{24}\] 100% 4\.00 GiB\/4\.00 GiB, read 3\.00 MiB 1\.5 MiB\/s$/);
      else expect(last).toBe('web/vda: read 3.00 MiB of 4.00 GiB in 2.0 s (1.5 MiB/s)');
    }
  });

  it('a status word after the label (sync: which snapshot of how many)', () => {
    const s = fakeStream(true);
    let at = 1;
    const p = makeProgress('sync', s, false, { status: () => `snapshot ${at}/2` });
    p.start('', 2 * MiB);
    p.advance(MiB);
    at = 2;
    p.advance(MiB);
    p.done();
    expect(s.text()).toMatch(/^\rsync snapshot 1\/2 \[/);
    expect(s.text()).toMatch(/\rsync snapshot 2\/2 \[#{24}\] 100% 2\.00 MiB\/2\.00 MiB/);
  });

  it('labels from outside are made printable', () => {
    const s = fakeStream(false);
    const p = makeProgress('evil\u001b[2J/vda', s, false, { reads: true });
    p.start('', MiB);
    p.advance(MiB);
    p.done();
    expect(s.text()).toMatch(/^evil\\x1b\[2J\/vda: read 1\.00 MiB of 1\.00 MiB in /);
  });
});
