//! Prompt embeddings as vLLM reads them (`safe_load_prompt_embeds`, vllm/renderers/embed_utils.py,
//! 0.33) and keys them (`_gen_prompt_embeds_extra_hash_keys`, vllm/v1/core/kv_cache_utils.py),
//! without Python: the `torch.save` bytes of a tensor (a zip archive holding a pickle and the raw
//! storage, [`zip`], [`pickle`]) are checked and read, squeezed to 2-D, cast to the model's dtype
//! as torch casts, and each full block of `block_size` rows gets the sha256 of its bytes: the
//! extra hash key vLLM puts on that block (its tokens are all 0).
//!
//! Errors carry vLLM's own wording where vLLM has one (dtype, shape, hidden size, not a tensor);
//! a payload vLLM's `torch.load` would refuse gets vLLM's prefix with this reader's reason. Only
//! dense tensors with a little-endian storage are read (vLLM also densifies sparse ones).

pub mod pickle;
pub mod zip;

use sha2::{Digest, Sha256};

/// The dtypes a model runs in (vLLM's `--dtype`), which prompt embeddings are cast to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedsDtype {
    F32,
    F16,
    Bf16,
}

impl EmbedsDtype {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "float32" | "float" => Some(EmbedsDtype::F32),
            "float16" | "half" => Some(EmbedsDtype::F16),
            "bfloat16" => Some(EmbedsDtype::Bf16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EmbedsDtype::F32 => "float32",
            EmbedsDtype::F16 => "float16",
            EmbedsDtype::Bf16 => "bfloat16",
        }
    }

    fn size(self) -> usize {
        match self {
            EmbedsDtype::F32 => 4,
            _ => 2,
        }
    }
}

/// A storage's element type, by its legacy `torch.<Name>Storage` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    F64,
    F32,
    F16,
    Bf16,
    /// Not floating point: torch's dtype name and its element size.
    Other(&'static str, usize),
}

impl Stored {
    fn of(name: &str) -> Option<Stored> {
        Some(match name {
            "Double" => Stored::F64,
            "Float" => Stored::F32,
            "Half" => Stored::F16,
            "BFloat16" => Stored::Bf16,
            "Long" => Stored::Other("int64", 8),
            "Int" => Stored::Other("int32", 4),
            "Short" => Stored::Other("int16", 2),
            "Char" => Stored::Other("int8", 1),
            "Byte" => Stored::Other("uint8", 1),
            "Bool" => Stored::Other("bool", 1),
            "ComplexFloat" => Stored::Other("complex64", 8),
            "ComplexDouble" => Stored::Other("complex128", 16),
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Stored::F64 => 8,
            Stored::F32 => 4,
            Stored::F16 | Stored::Bf16 => 2,
            Stored::Other(_, n) => n,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stored::F64 => "float64",
            Stored::F32 => "float32",
            Stored::F16 => "float16",
            Stored::Bf16 => "bfloat16",
            Stored::Other(n, _) => n,
        }
    }
}

/// Limits of [`load`].
#[derive(Clone, Copy, Debug)]
pub struct EmbedsLimits {
    /// Most bytes the tensor may hold as sent (vLLM: `VLLM_MAX_EMBED_DECODE_BYTES`, 2 GiB).
    pub max_bytes: u64,
    /// The model's hidden size, when known: rows of another width are refused.
    pub hidden_size: Option<usize>,
}

/// A prompt-embeddings tensor as vLLM hashes it: `rows x hidden`, in the model's dtype,
/// contiguous (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct PromptEmbeds {
    pub rows: usize,
    pub hidden: usize,
    pub dtype: EmbedsDtype,
    /// The dtype it was sent in (torch's name).
    pub sent_dtype: &'static str,
    pub data: Vec<u8>,
}

impl PromptEmbeds {
    /// The extra hash key of each block of `block_size` rows: sha256 of its bytes; the last,
    /// partial block's too (vLLM keys that block with it once output tokens fill it).
    pub fn block_digests(&self, block_size: usize) -> Vec<[u8; 32]> {
        let row = self.hidden * self.dtype.size();
        if block_size == 0 || row == 0 {
            return vec![];
        }
        self.data
            .chunks(block_size * row)
            .map(|b| Sha256::digest(b).into())
            .collect()
    }
}

/// Python's repr of a shape tuple: `(64,)`, `(1, 4, 64)`.
fn shape_repr(s: &[usize]) -> String {
    match s {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn undeserializable(reason: impl std::fmt::Display) -> String {
    format!("`prompt_embeds` could not be deserialized as a torch tensor: {reason}")
}

/// Reads `torch.save` bytes as vLLM's `safe_load_prompt_embeds` would for a model running in
/// `model` (see the module docs). The error is the message for the client's 400.
pub fn load(
    bytes: &[u8],
    model: EmbedsDtype,
    limits: EmbedsLimits,
) -> Result<PromptEmbeds, String> {
    if bytes.is_empty() {
        return Err(undeserializable("EOFError"));
    }
    let members = zip::members(bytes).map_err(undeserializable)?;
    // Members sit in one top-level folder (`archive/` or the file's stem).
    let find = |suffix: &[u8]| {
        members.iter().find(|m| {
            m.name.ends_with(suffix) && !m.name[..m.name.len() - suffix.len()].contains(&b'/')
        })
    };
    let pkl = find(b"/data.pkl").ok_or_else(|| undeserializable("no data.pkl in the archive"))?;
    if let Some(order) = find(b"/byteorder") {
        if order.data != b"little" {
            return Err(undeserializable("big-endian storages are not supported"));
        }
    }
    let value = pickle::load(pkl.data).map_err(undeserializable)?;
    let t = pickle::tensor_of(&value).map_err(|e| format!("`prompt_embeds` {e}."))?;
    let stored = Stored::of(&t.storage_type)
        .ok_or_else(|| undeserializable(format!("unknown storage type {}", t.storage_type)))?;
    let prefix = &pkl.name[..pkl.name.len() - b"data.pkl".len()];
    let key = [prefix, b"data/", t.key.as_bytes()].concat();
    let storage = members
        .iter()
        .find(|m| m.name == key.as_slice())
        .ok_or_else(|| undeserializable("the tensor's storage is missing from the archive"))?
        .data;

    // vLLM bounds the dense bytes the tensor declares before reading it.
    let numel = t.size.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let dense = numel.and_then(|n| n.checked_mul(stored.size()));
    match dense {
        Some(d) if (d as u64) <= limits.max_bytes => {}
        _ => {
            return Err(format!(
                "`prompt_embeds` declares shape {}, which would allocate {} bytes once densified, exceeding the {} byte limit.",
                shape_repr(&t.size),
                dense.map_or_else(|| "too many".to_string(), |d| d.to_string()),
                limits.max_bytes
            ))
        }
    }
    // Every element addressed must lie in the storage.
    let elems = storage.len() / stored.size();
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&n, &s)| {
            a.checked_add(n.saturating_sub(1).checked_mul(s)?)
        });
    if numel != Some(0) && last.is_none_or(|l| l >= elems) {
        return Err(undeserializable(
            "the tensor's view lies outside its storage",
        ));
    }

    let (mut size, mut stride) = (t.size.clone(), t.stride.clone());
    if size.len() > 2 && size[0] == 1 {
        size.remove(0);
        stride.remove(0);
    }
    if size.len() != 2 {
        return Err(format!(
            "`prompt_embeds` must be a 2D tensor of shape (num_tokens, hidden_size); got shape {}.",
            shape_repr(&size)
        ));
    }
    if let Some(h) = limits.hidden_size {
        if size[1] != h {
            return Err(format!(
                "`prompt_embeds` hidden_size {} does not match the model's hidden_size {h}.",
                size[1]
            ));
        }
    }
    if let Stored::Other(name, _) = stored {
        return Err(format!(
            "`prompt_embeds` dtype torch.{name} is not a floating-point type, cannot safely cast to the model's dtype torch.{}.",
            model.name()
        ));
    }
    let (rows, hidden) = (size[0], size[1]);
    let mut data = Vec::with_capacity(rows * hidden * model.size());
    let es = stored.size();
    if stride[1] == 1 && (rows <= 1 || stride[0] == hidden) {
        // Contiguous rows (what torch.save of a plain tensor holds): one slice.
        let bytes = &storage[t.offset * es..(t.offset + rows * hidden) * es];
        if same_dtype(stored, model) {
            data.extend_from_slice(bytes);
        } else {
            for b in bytes.chunks_exact(es) {
                cast(b, stored, model, &mut data);
            }
        }
    } else {
        for r in 0..rows {
            for c in 0..hidden {
                let at = (t.offset + r * stride[0] + c * stride[1]) * es;
                cast(&storage[at..at + es], stored, model, &mut data);
            }
        }
    }
    Ok(PromptEmbeds {
        rows,
        hidden,
        dtype: model,
        sent_dtype: stored.name(),
        data,
    })
}

fn same_dtype(from: Stored, to: EmbedsDtype) -> bool {
    matches!(
        (from, to),
        (Stored::F32, EmbedsDtype::F32)
            | (Stored::F16, EmbedsDtype::F16)
            | (Stored::Bf16, EmbedsDtype::Bf16)
    )
}

/// One element from `from` to `to`, as torch's `Tensor.to` converts it (through f32 for the
/// half types; f64 → f32 rounds to nearest even first, as c10 does).
fn cast(b: &[u8], from: Stored, to: EmbedsDtype, out: &mut Vec<u8>) {
    match (from, to) {
        (Stored::F32, EmbedsDtype::F32)
        | (Stored::F16, EmbedsDtype::F16)
        | (Stored::Bf16, EmbedsDtype::Bf16) => out.extend_from_slice(b),
        _ => {
            let f = match from {
                Stored::F64 => f64::from_le_bytes(b.try_into().unwrap()) as f32,
                Stored::F32 => f32::from_le_bytes(b.try_into().unwrap()),
                Stored::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
                Stored::Bf16 => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
                Stored::Other(..) => unreachable!("refused before casting"),
            };
            match to {
                EmbedsDtype::F32 => out.extend_from_slice(&f.to_le_bytes()),
                EmbedsDtype::Bf16 => out.extend_from_slice(&f32_to_bf16(f).to_le_bytes()),
                EmbedsDtype::F16 => out.extend_from_slice(&f32_to_f16(f).to_le_bytes()),
            }
        }
    }
}

/// c10's `round_to_nearest_even` (NaN → 0x7fc0).
fn f32_to_bf16(f: f32) -> u16 {
    if f.is_nan() {
        return 0x7fc0;
    }
    let u = f.to_bits();
    let rounding_bias = 0x7fff + ((u >> 16) & 1);
    (u.wrapping_add(rounding_bias) >> 16) as u16
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalize.
            let shift = m.leading_zeros() - 21;
            sign | ((113 - shift) << 23) | ((m << shift) & 0x3ff) << 13
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// IEEE binary32 → binary16, round to nearest even (overflow → ±inf, NaN stays NaN).
fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = ((x >> 16) & 0x8000) as u16;
    let exp = ((x >> 23) & 0xff) as i32;
    let man = x & 0x7f_ffff;
    if exp == 0xff {
        return sign
            | 0x7c00
            | if man != 0 {
                0x200 | (man >> 13) as u16
            } else {
                0
            };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal half: the implicit bit joins the mantissa, shifted right by 1 - e.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut out = m >> shift;
        if rest > half || (rest == half && out & 1 == 1) {
            out += 1;
        }
        return sign | out as u16;
    }
    let mut out = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && out & 1 == 1) {
        out += 1; // may carry into the exponent, up to inf: as IEEE rounding does
    }
    sign | out as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversions_round_trip_and_round_to_even() {
        for h in [
            0u16, 1, 0x3ff, 0x400, 0x3c00, 0x7bff, 0x7c00, 0x8001, 0xfbff,
        ] {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#x}");
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds up to inf
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00); // tie to even
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(f32::NAN), 0x7fc0);
    }

    #[test]
    fn shapes_print_as_python_tuples() {
        assert_eq!(shape_repr(&[64]), "(64,)");
        assert_eq!(shape_repr(&[1, 4, 64]), "(1, 4, 64)");
    }
}
