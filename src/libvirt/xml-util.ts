/** Small helpers shared by the XML readers and writers (fast-xml-parser node access, escaping). */
import { XMLParser } from 'fast-xml-parser';
import { VmvaultError } from '../util/index.js';

export type XmlNode = Record<string, unknown>;

export class LibvirtXmlError extends VmvaultError {
  constructor(what: string, problem: string, cause?: unknown) {
    super('LIBVIRT_XML', `cannot parse ${what}: ${problem}`, { cause });
  }
}

/** Escapes text for element content and single- or double-quoted attribute values. */
export function escapeXml(s: string): string {
  return s.replace(/[&<>"']/g, (c) =>
    c === '&' ? '&amp;' : c === '<' ? '&lt;' : c === '>' ? '&gt;' : c === '"' ? '&quot;' : '&apos;',
  );
}

/** A parser that keeps every value a string and gives repeated elements as arrays. */
export function makeParser(arrayElements: readonly string[]): XMLParser {
  const arrays = new Set(arrayElements);
  return new XMLParser({
    ignoreAttributes: false,
    attributeNamePrefix: '@_',
    parseTagValue: false,
    parseAttributeValue: false,
    trimValues: true,
    isArray: (name) => arrays.has(name),
  });
}

export function parseXml(parser: XMLParser, xml: string, what: string): XmlNode {
  let doc: unknown;
  try {
    doc = parser.parse(xml, true);
  } catch (err) {
    throw new LibvirtXmlError(what, (err as Error).message, err);
  }
  if (typeof doc !== 'object' || doc === null) throw new LibvirtXmlError(what, 'not an XML document');
  return doc as XmlNode;
}

/** The child element `name` as an object (an element with only text becomes {'#text': ...}). */
export function child(node: unknown, name: string): XmlNode | undefined {
  if (typeof node !== 'object' || node === null) return undefined;
  const v = (node as XmlNode)[name];
  if (v === undefined) return undefined;
  if (Array.isArray(v)) return asNode(v[0]);
  return asNode(v);
}

export function children(node: unknown, name: string): XmlNode[] {
  if (typeof node !== 'object' || node === null) return [];
  const v = (node as XmlNode)[name];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).map(asNode);
}

function asNode(v: unknown): XmlNode {
  if (typeof v === 'object' && v !== null) return v as XmlNode;
  // `<x/>` parses as '' and `<x>text</x>` as 'text'.
  return v === '' || v === undefined ? {} : { '#text': String(v) };
}

export function attr(node: XmlNode | undefined, name: string): string | undefined {
  const v = node?.[`@_${name}`];
  return v === undefined ? undefined : String(v);
}

/** The text content of child `name` (or of the node itself when name is omitted). */
export function text(node: XmlNode | undefined, name?: string): string | undefined {
  const n = name === undefined ? node : child(node, name);
  const v = n?.['#text'];
  return v === undefined ? undefined : String(v);
}

/** `<name>` present at all (`<readonly/>`). */
export function has(node: XmlNode | undefined, name: string): boolean {
  return node !== undefined && node[name] !== undefined;
}
