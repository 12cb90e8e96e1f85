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
