#!/usr/bin/env node
// Fits the mocker's timing model (ts/mocker/config.ts, TimingModel) to the H200 measurements in
// profile-llama-3.1-8b-h200.json by least squares, and prints the fitted parameters and each
// point's error. Run: node scripts/profile-gpu/derive-mocker-profile.mjs
//
// Decode (CUDA-graph steps): ms = stepBase + decodePerSeq x B + decodePerContextToken x B x C.
// Prefill (chunks of <= 8192 new tokens after `done` computed ones, eager PyTorch):
//   ms = stepBase + prefillPerToken x n + attentionPerTokenPair x n x (done + n / 2),
// with stepBase taken from the decode fit. The 1,024-token prefill (60 ms, as long as 2,048) is
// launch-bound in eager mode and left out of the fit.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const data = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), "profile-llama-3.1-8b-h200.json"), "utf8"));

/** Least squares: rows of features, targets → coefficients (normal equations, Gaussian elimination). */
function lstsq(X, y) {
  const k = X[0].length;
  const A = Array.from({ length: k }, () => new Array(k + 1).fill(0));
  for (let r = 0; r < X.length; r++) {
    for (let i = 0; i < k; i++) {
      for (let j = 0; j < k; j++) A[i][j] += X[r][i] * X[r][j];
      A[i][k] += X[r][i] * y[r];
    }
  }
  for (let i = 0; i < k; i++) {
    let p = i;
    for (let r = i + 1; r < k; r++) if (Math.abs(A[r][i]) > Math.abs(A[p][i])) p = r;
    [A[i], A[p]] = [A[p], A[i]];
    for (let r = 0; r < k; r++) {
      if (r === i) continue;
      const f = A[r][i] / A[i][i];
      for (let c = i; c <= k; c++) A[r][c] -= f * A[i][c];
    }
  }
  return A.map((row, i) => row[k] / row[i]);
}

const dec = data.decode.filter((d) => d.ms !== undefined);
// Relative errors matter: weight each row by 1 / ms.
const [base, perSeq, perCtx] = lstsq(
  dec.map((d) => [1 / d.ms, d.batch / d.ms, (d.batch * d.context) / d.ms]),
  dec.map(() => 1),
);
const chunks = [];
for (const p of data.prefill) {
  if (p.chunks_ms === undefined || p.isl < 2048) continue;
  let done = 0;
  for (const ms of p.chunks_ms) {
    const n = Math.min(data.chunk_tokens, p.isl - done);
    chunks.push({ isl: p.isl, done, n, ms });
    done += n;
  }
}
const [perTok, perPair] = lstsq(
  chunks.map((c) => [c.n / c.ms, (c.n * (c.done + c.n / 2)) / c.ms]),
  chunks.map((c) => (c.ms - base) / c.ms),
);
const fmt = (x) => Number(x.toPrecision(3));
console.log(JSON.stringify({ stepBaseMs: fmt(base), prefillPerTokenMs: fmt(perTok), attentionPerTokenPairMs: fmt(perPair), decodePerSeqMs: fmt(perSeq), decodePerContextTokenMs: fmt(perCtx) }));
console.log("decode B C measured fitted error");
for (const d of dec) {
  const f = base + perSeq * d.batch + perCtx * d.batch * d.context;
  console.log(`${d.batch} ${d.context} ${d.ms.toFixed(2)} ${f.toFixed(2)} ${(((f - d.ms) / d.ms) * 100).toFixed(1)}%`);
}
console.log("prefill isl done n measured fitted error");
for (const c of chunks) {
  const f = base + perTok * c.n + perPair * c.n * (c.done + c.n / 2);
  console.log(`${c.isl} ${c.done} ${c.n} ${c.ms.toFixed(1)} ${f.toFixed(1)} ${(((f - c.ms) / c.ms) * 100).toFixed(1)}%`);
}
console.log(`max_kv_tokens ${data.max_kv_tokens} = ${Math.floor(data.max_kv_tokens / 16)} blocks of 16`);
