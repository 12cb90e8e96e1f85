import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { sh } from './harness.js';

export const CACHE = process.env.VMVAULT_BENCH_CACHE ?? join(process.cwd(), 'bench/.cache');

/**
 * A realistic ext4 image: a 4 GiB filesystem filled (mkfs.ext4 -d) with real files from this
 * machine (/usr/share, /usr/lib/x86_64-linux-gnu, /usr/lib/jvm: about 2 GB of libraries, text,
 * images, jars), plus a near-identical clone with 64 MiB rewritten in the middle.
 */
export async function ext4Images(): Promise<{ base: string; clone: string; sizeBytes: number }> {
  mkdirSync(CACHE, { recursive: true });
  const base = join(CACHE, 'ext4-real.raw');
  const clone = join(CACHE, 'ext4-clone.raw');
  if (!existsSync(base)) {
    const stage = join(CACHE, 'stage');
    await sh(
      `rm -rf ${stage} && mkdir -p ${stage} && for d in /usr/share /usr/lib/x86_64-linux-gnu /usr/lib/jvm; do [ -d $d ] && cp -al $d ${stage}/$(echo $d | tr / _) 2>/dev/null || cp -a $d ${stage}/$(echo $d | tr / _) ; done; true`,
    );
    await sh(
      `truncate -s 4G ${base}.tmp && mkfs.ext4 -q -F -d ${stage} ${base}.tmp && mv ${base}.tmp ${base} && rm -rf ${stage}`,
    );
  }
  if (!existsSync(clone)) {
    await sh(
      `cp --sparse=always ${base} ${clone}.tmp && head -c 64M /dev/urandom | dd of=${clone}.tmp bs=1M seek=1500 conv=notrunc,sparse status=none && mv ${clone}.tmp ${clone}`,
    );
  }
  const sizeBytes = Number((await sh(`du -B1 --apparent-size ${base} | cut -f1`)).trim());
  return { base, clone, sizeBytes };
}

/**
 * The first `sliceMiB` MiB of the ext4 image (a quick stand-in with the same kind of data), and
 * its clone: the slice with 1/64 of it rewritten in the middle, as the full image's clone has.
 */
export async function ext4Slice(sliceMiB = 512): Promise<{ base: string; clone: string; sizeBytes: number }> {
  const full = await ext4Images();
  const base = join(CACHE, `ext4-slice-${sliceMiB}M.raw`);
  const clone = join(CACHE, `ext4-slice-${sliceMiB}M-clone.raw`);
  if (!existsSync(base))
    await sh(
      `dd if=${full.base} of=${base}.tmp bs=1M count=${sliceMiB} conv=sparse status=none && mv ${base}.tmp ${base}`,
    );
  if (!existsSync(clone)) {
    const changedMiB = Math.max(1, sliceMiB / 64);
    await sh(
      `cp --sparse=always ${base} ${clone}.tmp && head -c ${changedMiB}M /dev/urandom | dd of=${clone}.tmp bs=1M seek=${sliceMiB / 2} conv=notrunc,sparse status=none && mv ${clone}.tmp ${clone}`,
    );
  }
  return { base, clone, sizeBytes: sliceMiB * 2 ** 20 };
}

/** The bench image and its clone: the whole ext4 image, or with `quick` its 512 MiB slice. */
export const benchImages = (quick: boolean): Promise<{ base: string; clone: string; sizeBytes: number }> =>
  quick ? ext4Slice(512) : ext4Images();
