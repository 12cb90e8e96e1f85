/**
 * Test-only (docs/cli.md): `VMVAULT_TEST_PAUSE=POINT:MS` makes the process wait MS milliseconds
 * at a named point (`after-pin`: a live incremental has pinned its parent; `before-commit`: a
 * snapshot is about to be committed; `snapshot-copy`: a `--method snapshot` backup has put the
 * domain on its overlays and is about to copy the base images), so that a test can act meanwhile (forget, prune, SIGSTOP).
 */
export async function testPause(point: 'after-pin' | 'before-commit' | 'snapshot-copy'): Promise<void> {
  const m = /^([a-z-]+):(\d+)$/.exec(process.env.VMVAULT_TEST_PAUSE ?? '');
  if (m && m[1] === point) {
    process.stderr.write(`vmvault: test pause at ${point}\n`); // a test waits for this line
    await new Promise((r) => setTimeout(r, Number(m[2])));
  }
}
