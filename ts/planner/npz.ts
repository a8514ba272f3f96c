/**
 * Reads NumPy's `.npz` (a zip of `.npy` arrays) without Python: Dynamo's profiler writes its
 * interpolation data as `raw_data.npz`, and a Dynamo user should be able to bring those files.
 *
 * Supported, as numpy writes them: zip entries stored or deflated (`np.savez` /
 * `np.savez_compressed`), `.npy` format 1.0-3.0, little-endian or big-endian float64/float32/
 * int64/int32/int16/uint8/bool, C or Fortran order (values are returned flat, in C order for
 * 1-D data; 2-D Fortran data is transposed back). Anything else is a clear ProfileError, never a
 * crash; sizes are checked against the buffer before reading, so a hostile file cannot make us
 * allocate more than it holds.
 */
import { inflateRawSync } from "node:zlib";
import { ProfileError } from "./errors.js";

export interface NpyArray {
  shape: number[];
  data: Float64Array;
}

const EOCD_SIG = 0x06054b50;
const CEN_SIG = 0x02014b50;
const LOC_SIG = 0x04034b50;
/** Largest array (elements) a profile plausibly holds; more is refused, not allocated. */
const MAX_ELEMENTS = 1 << 24;

/** The arrays of an .npz file, by name without the `.npy` suffix. */
export function readNpz(buf: Buffer, file = "npz"): Map<string, NpyArray> {
  const bad = (why: string): never => {
    throw new ProfileError(`${file}: not a readable .npz (${why})`);
  };
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 0xffff); i--) {
    if (buf.readUInt32LE(i) === EOCD_SIG) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) bad("no zip end-of-central-directory record");
  const entries = buf.readUInt16LE(eocd + 10);
  let p = buf.readUInt32LE(eocd + 16);
  const out = new Map<string, NpyArray>();
  for (let e = 0; e < entries; e++) {
    if (p + 46 > buf.length || buf.readUInt32LE(p) !== CEN_SIG) bad("broken central directory");
    const method = buf.readUInt16LE(p + 10);
    const compSize = buf.readUInt32LE(p + 20);
    const size = buf.readUInt32LE(p + 24);
    const nameLen = buf.readUInt16LE(p + 28);
    const extraLen = buf.readUInt16LE(p + 30);
    const commentLen = buf.readUInt16LE(p + 32);
    const local = buf.readUInt32LE(p + 42);
    const name = buf.toString("utf8", p + 46, p + 46 + nameLen);
    p += 46 + nameLen + extraLen + commentLen;
    if (compSize === 0xffffffff || size === 0xffffffff) bad(`${name}: zip64 entries are not supported`);
    if (local + 30 > buf.length || buf.readUInt32LE(local) !== LOC_SIG) bad(`${name}: broken local header`);
    const start = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    if (start + compSize > buf.length) bad(`${name}: truncated`);
    const raw = buf.subarray(start, start + compSize);
    let body: Buffer;
    if (method === 0) body = raw;
    else if (method === 8) {
      try {
        body = inflateRawSync(raw, { maxOutputLength: Math.max(size, 1) });
      } catch (err) {
        return bad(`${name}: ${err instanceof Error ? err.message : String(err)}`);
      }
    } else return bad(`${name}: compression method ${method} is not supported`);
    if (!name.endsWith(".npy")) continue;
    out.set(name.slice(0, -4), readNpy(body, `${file}:${name}`));
  }
  return out;
}

/** One `.npy` array, as float64 values. */
export function readNpy(buf: Buffer, file = "npy"): NpyArray {
  const bad = (why: string): never => {
    throw new ProfileError(`${file}: not a readable .npy (${why})`);
  };
  if (buf.length < 10 || buf.toString("latin1", 0, 6) !== "\x93NUMPY") bad("no NUMPY magic");
  const major = buf[6]!;
  let headerLen: number;
  let off: number;
  if (major === 1) {
    headerLen = buf.readUInt16LE(8);
    off = 10;
  } else if (major === 2 || major === 3) {
    if (buf.length < 12) bad("truncated header");
    headerLen = buf.readUInt32LE(8);
    off = 12;
  } else return bad(`format version ${major}`);
  if (off + headerLen > buf.length) bad("truncated header");
  const header = buf.toString(major === 3 ? "utf8" : "latin1", off, off + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || shapeText === undefined) return bad(`header ${JSON.stringify(header.trim())}`);
  const shape = shapeText
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map(Number);
  if (shape.some((d) => !Number.isInteger(d) || d < 0)) bad(`shape (${shapeText})`);
  const count = shape.reduce((a, b) => a * b, 1);
  if (count > MAX_ELEMENTS) bad(`${count} elements is more than a profile holds`);
  const m = /^([<>|=])([fiub])(\d+)$/.exec(descr);
  if (m === null) return bad(`dtype ${descr}`);
  const [, order, kind, widthText] = m;
  const width = Number(widthText);
  const big = order === ">";
  const dataStart = off + headerLen;
  if (dataStart + count * width > buf.length) bad(`data truncated (${count} x ${width} bytes)`);
  const read = reader(kind!, width, big) ?? bad(`dtype ${descr}`);
  const flat = new Float64Array(count);
  for (let i = 0; i < count; i++) flat[i] = read(buf, dataStart + i * width);
  if (fortran && shape.length === 2) {
    const [r, c] = shape as [number, number];
    const t = new Float64Array(count);
    for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) t[i * c + j] = flat[j * r + i]!;
    return { shape, data: t };
  }
  return { shape, data: flat };
}

type Read = (b: Buffer, at: number) => number;
function reader(kind: string, width: number, big: boolean): Read | null {
  if (kind === "f" && width === 8) return big ? (b, a) => b.readDoubleBE(a) : (b, a) => b.readDoubleLE(a);
  if (kind === "f" && width === 4) return big ? (b, a) => b.readFloatBE(a) : (b, a) => b.readFloatLE(a);
  if (kind === "i" && width === 8) return big ? (b, a) => Number(b.readBigInt64BE(a)) : (b, a) => Number(b.readBigInt64LE(a));
  if (kind === "i" && width === 4) return big ? (b, a) => b.readInt32BE(a) : (b, a) => b.readInt32LE(a);
  if (kind === "i" && width === 2) return big ? (b, a) => b.readInt16BE(a) : (b, a) => b.readInt16LE(a);
  if (kind === "u" && width === 8) return big ? (b, a) => Number(b.readBigUInt64BE(a)) : (b, a) => Number(b.readBigUInt64LE(a));
  if (kind === "u" && width === 4) return big ? (b, a) => b.readUInt32BE(a) : (b, a) => b.readUInt32LE(a);
  if ((kind === "u" || kind === "b") && width === 1) return (b, a) => b[a]!;
  return null;
}
