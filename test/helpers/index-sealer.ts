import { blake3 } from '@napi-rs/blake-hash';
import type { SectionSealer } from '../../src/repo/chunk-index/index.js';

/**
 * A plain SectionSealer for tests: plaintext ‖ BLAKE3-128(binder ‖ u32 section ‖ plaintext).
 * Damage, a wrong binder or a wrong section fail the tag; the lead binds the real codec.
 */
export const plainSealer: SectionSealer = {
  seal(binder, section, plaintext) {
    const out = Buffer.alloc(plaintext.length + 16);
    out.set(plaintext, 0);
    tag(binder, section, plaintext).copy(out, plaintext.length);
    return out;
  },
  open(binder, section, sealed, maxPlaintextBytes) {
    if (sealed.length < 16) throw new Error('sealed section too short');
    const n = sealed.length - 16;
    if (n > maxPlaintextBytes) throw new Error(`plaintext of ${n} bytes above ${maxPlaintextBytes}`);
    const plain = Buffer.from(sealed.buffer, sealed.byteOffset, n);
    if (!tag(binder, section, plain).equals(sealed.subarray(n))) throw new Error('tag mismatch');
    return plain; // a view of `sealed`, as a codec opening in place may return
  },
  sealedBytes(plaintextBytes) {
    return plaintextBytes + 16;
  },
};

function tag(binder: Buffer, section: number, plaintext: Uint8Array): Buffer {
  const head = Buffer.alloc(20);
  binder.copy(head, 0, 0, 16);
  head.writeUInt32BE(section, 16);
  return blake3(Buffer.concat([head, plaintext])).subarray(0, 16);
}
