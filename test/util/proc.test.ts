import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { pidAlive } from '../../src/util/index.js';

describe('pidAlive', () => {
  it('is true for this process', () => {
    expect(pidAlive(process.pid)).toBe(true);
  });

  it('is false for a child that has exited and been reaped', async () => {
    const child = spawn(process.execPath, ['-e', '']);
    const pid = child.pid!;
    await once(child, 'exit');
    expect(pidAlive(pid)).toBe(false);
  });
});
