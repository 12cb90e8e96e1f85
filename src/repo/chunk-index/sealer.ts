import { BlobFormatError, type BlobCodec } from '../codec.js';

/**
 * How the chunk index seals its sections and void records. Injected, so that the index does not
 * depend on the codec's implementation: the repository binds it to
 * `BlobCodec.sealObject/openObject` (kind 'index-section', binder = the object's 16-byte salt,
 * section number; void records: kind 'void', binder = the void's name bytes, section 0).
 *
 * Index pages must be sealed raw (no compression): their offsets are computed from
 * `sealedBytes`, and the writer refuses a sealed page of any other size.
 */
export interface SectionSealer {
  seal(binder: Buffer, section: number, plaintext: Uint8Array): Buffer;
  /** Throws on damage (a wrong tag, binder or section, a plaintext longer than the bound). */
  open(binder: Buffer, section: number, sealed: Uint8Array, maxPlaintextBytes: number): Buffer;
  /** Size of a sealed section of that plaintext (stored raw). */
  sealedBytes(plaintextBytes: number): number;
}

/**
 * The repository's sealer: the codec's sealed objects of kind 'index-section' (stored raw, so
 * `sealedBytes` is exact), bound to the object's salt through the header's binder and to the
 * section number through the AAD. A section sealed for another object (another binder) is damage.
 */
export function codecSectionSealer(codec: BlobCodec): SectionSealer {
  return {
    seal: (binder, section, plaintext) => codec.sealObject('index-section', plaintext, binder, { section }),
    open(binder, section, sealed, maxPlaintextBytes) {
      const b = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
      if (b.length < 32 || !b.subarray(16, 32).equals(binder.subarray(0, 16)))
        throw new BlobFormatError('index section belongs to another object (binder mismatch)');
      return codec.openObject('index-section', b, { section, maxPlaintextBytes });
    },
    sealedBytes: (plaintextBytes) => codec.sealedObjectBytes(plaintextBytes),
  };
}
