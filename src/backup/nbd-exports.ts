import {
  BASE_ALLOCATION,
  NbdClient,
  QEMU_DIRTY_BITMAP_PREFIX,
  startQemuNbd,
  walkExtents,
} from '../nbd/index.js';
import type { ExportExtent, ExportOpener, ExportReader } from './live.js';

async function reader(
  socketPath: string,
  exportName: string,
  bitmap: string | null,
  onClose?: () => Promise<void>,
): Promise<ExportReader> {
  const dirtyContext = bitmap ? `${QEMU_DIRTY_BITMAP_PREFIX}${bitmap}` : undefined;
  let client: NbdClient;
  try {
    client = await NbdClient.connect({
      socketPath,
      exportName,
      metaContexts: dirtyContext ? [BASE_ALLOCATION, dirtyContext] : [BASE_ALLOCATION],
      timeoutMs: 30_000,
    });
  } catch (err) {
    await onClose?.();
    throw err;
  }
  return {
    sizeBytes: client.sizeBytes,
    read: (offset, length, into) => client.read(offset, length, into),
    async *extents(offset, length): AsyncIterable<ExportExtent> {
      for await (const e of walkExtents(client, offset, length, dirtyContext)) {
        yield {
          offset: e.offset,
          length: e.length,
          isZero: e.isZero || (e.isHole && e.isZero),
          isDirty: e.isDirty,
        };
      }
    },
    async close() {
      await client.close();
      await onClose?.();
    },
  };
}

/** Disk exports over our NBD client: the backup job's socket, or qemu-nbd for a shut-off domain. */
export function nbdExports(): ExportOpener {
  return {
    openSocket: (socketPath, exportName, bitmap) => reader(socketPath, exportName, bitmap),
    async openImage(path, format, bitmap, runtimeDir) {
      const exp = await startQemuNbd({ path, format, runtimeDir, readOnly: true, bitmap });
      return reader(exp.socketPath, exp.exportName, bitmap, () => exp.stop());
    },
  };
}
