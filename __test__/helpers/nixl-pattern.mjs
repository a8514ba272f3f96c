// A deterministic byte pattern (xorshift32 words) that differs for every seed, so a transfer
// that moved the wrong bytes, or no bytes, cannot pass a comparison.
export function pattern(size, seed) {
  const buf = Buffer.allocUnsafe(size);
  const words = new Uint32Array(buf.buffer, buf.byteOffset, Math.floor(size / 4));
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  for (let i = words.length * 4; i < size; i++) buf[i] = (seed + i) & 0xff;
  return buf;
}
