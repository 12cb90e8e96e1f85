import { describe, expect, it } from 'vitest';
import { LibvirtProtocolError } from '../../src/libvirt/errors.js';
import { REMOTE_PROGRAM } from '../../src/libvirt/protocol/remote.js';
import {
  PacketDecoder,
  VIR_NET_MESSAGE_MAX,
  encodePacket,
  type Packet,
} from '../../src/libvirt/rpc/packet.js';

const header = { program: REMOTE_PROGRAM, version: 1, procedure: 66, type: 1, serial: 7, status: 0 };

describe('libvirt packet framing', () => {
  it('writes the length including itself, then the 24-byte header', () => {
    const buf = encodePacket(header, Buffer.from('00000000', 'hex'));
    expect(buf.toString('hex')).toBe(
      '00000020' + '20008086' + '00000001' + '00000042' + '00000001' + '00000007' + '00000000' + '00000000',
    );
  });

  it('decodes packets split at every byte boundary', () => {
    const a = encodePacket(header, Buffer.from('0000000100000002', 'hex'));
    const b = encodePacket({ ...header, serial: 8, type: 2, procedure: 318 }, Buffer.alloc(0));
    const c = encodePacket({ ...header, serial: 9, status: 1 }, Buffer.from('deadbeef', 'hex'));
    const stream = Buffer.concat([a, b, c]);
    for (let i = 0; i <= stream.length; i++) {
      for (const j of [i, Math.min(stream.length, i + 1), Math.min(stream.length, i + 29)]) {
        const d = new PacketDecoder();
        const out: Packet[] = [
          ...d.push(stream.subarray(0, i)),
          ...d.push(stream.subarray(i, j)),
          ...d.push(stream.subarray(j)),
        ];
        expect(out.map((p) => p.header.serial)).toEqual([7, 8, 9]);
        expect(out[0]!.payload.toString('hex')).toBe('0000000100000002');
        expect(out[1]!.header).toEqual({ ...header, serial: 8, type: 2, procedure: 318 });
        expect(out[1]!.payload.length).toBe(0);
        expect(out[2]!.header.status).toBe(1);
        expect(out[2]!.payload.toString('hex')).toBe('deadbeef');
        expect(d.pendingBytes).toBe(0);
      }
    }
  });

  it('decodes a stream fed one byte at a time', () => {
    const stream = Buffer.concat([
      encodePacket(header, Buffer.alloc(8)),
      encodePacket({ ...header, serial: 8 }),
    ]);
    const d = new PacketDecoder();
    const out: Packet[] = [];
    for (const byte of stream) out.push(...d.push(Buffer.from([byte])));
    expect(out.map((p) => p.header.serial)).toEqual([7, 8]);
  });

  it('rejects a length shorter than the header or above the limit', () => {
    expect(() => new PacketDecoder().push(Buffer.from('0000001b', 'hex'))).toThrow(LibvirtProtocolError);
    const huge = Buffer.alloc(4);
    huge.writeUInt32BE(VIR_NET_MESSAGE_MAX + 5);
    expect(() => new PacketDecoder().push(huge)).toThrow(/exceeds/);
  });
});
