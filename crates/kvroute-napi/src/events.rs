//! `encodeKvEventBatch` / `decodeKvEventBatch`: vLLM `KVEventBatch` payloads to and from plain JS
//! objects, in any released wire form (for the mocker engine's publisher and for tests). The
//! codec itself is `kvroute_core::events`; this file only converts values.
//!
//! JS shape (camelCase of vLLM's fields; `ts/events/codec.ts` has the TS types):
//! `{ ts, dataParallelRank?, events: [{ type: "BlockStored", blockHashes, parentBlockHash?,
//! tokenIds, blockSize, loraId?, medium?, loraName?, extraKeys?, groupIdx?, kvCacheSpecKind?,
//! kvCacheSpecSlidingWindow?, locality?, ownership?, sessionId?, lookaheadTokenIds? } |
//! { type: "BlockRemoved", blockHashes, medium?, groupIdx?, locality?, ownership? } |
//! { type: "AllBlocksCleared" }] }`. Hashes are bigints (negative ones are vLLM 0.9's signed
//! ints), safe-integer numbers, or Buffers/Uint8Arrays (the bytes form); decoding always gives
//! bigints and Buffers. Absent fields are `null` in decoded objects; `null` and `undefined` mean
//! "absent" on input.

use std::ffi::CStr;
use std::ptr;

use kvroute_core::events::msgpack::Value as Mp;
use kvroute_core::events::{
    decode_batch, encode_batch, BlockHash, BlockHashes, BlockRemoved, BlockStored, KvEvent,
    KvEventBatch, Medium, WireFormat,
};
use napi::bindgen_prelude::{
    BigInt, Buffer, FromNapiValue, ToNapiValue, TypeName, Uint8ArraySlice, ValueType,
};
use napi::{sys, Result};
use napi_derive::napi;

use crate::convert::{invalid_config, invalid_input};

/// Deepest `extraKeys` value nesting accepted (vLLM's is 3).
const MAX_DEPTH: usize = 32;
/// Largest integer a JS number holds exactly.
const MAX_SAFE: f64 = 9_007_199_254_740_991.0;

/// The wire form named by `format`: a vLLM version ("0.22.0"), `"current"` (default) or
/// `"legacy"` (vLLM 0.9.0).
pub fn wire_format(format: Option<&str>) -> Result<WireFormat> {
    match format {
        None | Some("current") => Ok(WireFormat::CURRENT),
        Some("legacy") => Ok(WireFormat::LEGACY),
        Some(v) => WireFormat::for_vllm_version(v).ok_or_else(|| {
            invalid_config(format!(
                "unknown KV event format '{v}': expected a vLLM version (0.9.0 or newer), \"current\" or \"legacy\""
            ))
        }),
    }
}

/// Encodes a batch object as vLLM's publisher of the given release would (default: the newest).
#[napi(ts_args_type = "batch: object, format?: string | undefined | null")]
pub fn encode_kv_event_batch(batch: JsBatch, format: Option<String>) -> Result<Buffer> {
    let format = wire_format(format.as_deref())?;
    Ok(encode_batch(&batch.0, format).into())
}

/// Decodes one payload (any released form) into a plain object; throws `KVR_INVALID_INPUT` for a
/// malformed payload. Events the decoder had to drop are listed in `skipped`.
#[napi(ts_return_type = "object")]
pub fn decode_kv_event_batch(payload: Uint8ArraySlice) -> Result<JsBatch> {
    decode_batch(&payload).map(JsBatch).map_err(invalid_input)
}

/// A `KVEventBatch` crossing the boundary as a plain object.
pub struct JsBatch(pub KvEventBatch);

impl TypeName for JsBatch {
    fn type_name() -> &'static str {
        "KvEventBatch"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl FromNapiValue for JsBatch {
    unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
        // SAFETY: `env` and `v` come from napi for the duration of this call.
        unsafe { read_batch(env, v) }.map(JsBatch)
    }
}

impl ToNapiValue for JsBatch {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        // SAFETY: as above.
        unsafe { write_batch(env, &val.0) }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw helpers. Every function is `unsafe` because it takes raw napi handles, which must be valid
// for the current call (they always are: they come from napi-rs's conversion entry points).
// ---------------------------------------------------------------------------------------------

fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(napi::Error::new(
            napi::Status::GenericFailure,
            format!("napi call failed: {what}"),
        ))
    }
}

unsafe fn type_of(env: sys::napi_env, v: sys::napi_value) -> Result<i32> {
    let mut t = 0;
    check(unsafe { sys::napi_typeof(env, v, &mut t) }, "typeof")?;
    Ok(t)
}

/// A property, `None` when undefined or null.
unsafe fn prop(
    env: sys::napi_env,
    obj: sys::napi_value,
    name: &CStr,
) -> Result<Option<sys::napi_value>> {
    let mut out = ptr::null_mut();
    check(
        unsafe { sys::napi_get_named_property(env, obj, name.as_ptr(), &mut out) },
        "get property",
    )?;
    let t = unsafe { type_of(env, out) }?;
    Ok((t != sys::ValueType::napi_undefined && t != sys::ValueType::napi_null).then_some(out))
}

fn field_err(field: &CStr, what: &str) -> napi::Error {
    invalid_input(format!(
        "KV event batch: {} {what}",
        field.to_string_lossy()
    ))
}

unsafe fn elements(
    env: sys::napi_env,
    v: sys::napi_value,
    field: &CStr,
) -> Result<Vec<sys::napi_value>> {
    let mut is = false;
    check(unsafe { sys::napi_is_array(env, v, &mut is) }, "is_array")?;
    if !is {
        return Err(field_err(field, "must be an array"));
    }
    let mut n = 0u32;
    check(
        unsafe { sys::napi_get_array_length(env, v, &mut n) },
        "array length",
    )?;
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut e = ptr::null_mut();
        check(
            unsafe { sys::napi_get_element(env, v, i, &mut e) },
            "array element",
        )?;
        out.push(e);
    }
    Ok(out)
}

/// `(data, length in elements)` of a typed array of type `want`, `None` for anything else
/// (`data` is null when it is empty).
unsafe fn typed_array_of(
    env: sys::napi_env,
    v: sys::napi_value,
    want: sys::napi_typedarray_type,
) -> Result<Option<(*const std::ffi::c_void, usize)>> {
    let mut is = false;
    check(
        unsafe { sys::napi_is_typedarray(env, v, &mut is) },
        "is_typedarray",
    )?;
    if !is {
        return Ok(None);
    }
    let (mut t, mut len, mut data) = (0, 0usize, ptr::null_mut());
    let (mut ab, mut off) = (ptr::null_mut(), 0usize);
    check(
        unsafe {
            sys::napi_get_typedarray_info(env, v, &mut t, &mut len, &mut data, &mut ab, &mut off)
        },
        "typedarray info",
    )?;
    if t != want {
        return Ok(None);
    }
    Ok(Some((
        if len == 0 {
            ptr::null()
        } else {
            data as *const _
        },
        len,
    )))
}

/// The bytes of a Buffer or Uint8Array, `None` for anything else.
unsafe fn bytes_of<'a>(env: sys::napi_env, v: sys::napi_value) -> Result<Option<&'a [u8]>> {
    let found = unsafe { typed_array_of(env, v, sys::TypedarrayType::uint8_array) }?;
    Ok(found.map(|(data, len)| {
        if data.is_null() {
            &[][..]
        } else {
            // SAFETY: napi reports `len` bytes at `data`, alive while the value is.
            unsafe { std::slice::from_raw_parts(data as *const u8, len) }
        }
    }))
}

/// `Some(u32 array)` for a Uint32Array, `None` for anything else.
unsafe fn u32s_of(env: sys::napi_env, v: sys::napi_value) -> Result<Option<Vec<u32>>> {
    let found = unsafe { typed_array_of(env, v, sys::TypedarrayType::uint32_array) }?;
    Ok(found.map(|(data, len)| {
        if data.is_null() {
            Vec::new()
        } else {
            // SAFETY: a Uint32Array's data is `len` aligned u32s.
            unsafe { std::slice::from_raw_parts(data as *const u32, len) }.to_vec()
        }
    }))
}

unsafe fn number(env: sys::napi_env, v: sys::napi_value, field: &CStr) -> Result<f64> {
    if unsafe { type_of(env, v) }? != sys::ValueType::napi_number {
        return Err(field_err(field, "must be a number"));
    }
    unsafe { f64::from_napi_value(env, v) }
}

unsafe fn int(env: sys::napi_env, v: sys::napi_value, field: &CStr) -> Result<i64> {
    if unsafe { type_of(env, v) }? == sys::ValueType::napi_bigint {
        let (x, lossless) = unsafe { BigInt::from_napi_value(env, v) }?.get_i64();
        return if lossless {
            Ok(x)
        } else {
            Err(field_err(field, "is out of the 64-bit range"))
        };
    }
    let x = unsafe { number(env, v, field) }?;
    if x.fract() != 0.0 || x.abs() > MAX_SAFE {
        return Err(field_err(field, "must be a safe integer (or a bigint)"));
    }
    Ok(x as i64)
}

unsafe fn uint32(env: sys::napi_env, v: sys::napi_value, field: &CStr) -> Result<u32> {
    u32::try_from(unsafe { int(env, v, field) }?)
        .map_err(|_| field_err(field, "must be in [0, 2^32)"))
}

unsafe fn string(env: sys::napi_env, v: sys::napi_value, field: &CStr) -> Result<String> {
    if unsafe { type_of(env, v) }? != sys::ValueType::napi_string {
        return Err(field_err(field, "must be a string"));
    }
    unsafe { String::from_napi_value(env, v) }
}

unsafe fn opt<T>(
    env: sys::napi_env,
    obj: sys::napi_value,
    field: &CStr,
    f: unsafe fn(sys::napi_env, sys::napi_value, &CStr) -> Result<T>,
) -> Result<Option<T>> {
    match unsafe { prop(env, obj, field) }? {
        None => Ok(None),
        Some(v) => unsafe { f(env, v, field) }.map(Some),
    }
}

unsafe fn hash(env: sys::napi_env, v: sys::napi_value, field: &CStr) -> Result<BlockHash> {
    match unsafe { type_of(env, v) }? {
        sys::ValueType::napi_bigint => {
            let b = unsafe { BigInt::from_napi_value(env, v) }?;
            let words = b.words.iter().rposition(|&w| w != 0).map_or(0, |i| i + 1);
            match (b.sign_bit, words) {
                (_, 0) => Ok(BlockHash::Int(0)),
                (false, 1) => Ok(BlockHash::Int(b.words[0])),
                (true, 1) if b.words[0] <= 1 << 63 => {
                    Ok(BlockHash::NegInt((b.words[0] as i64).wrapping_neg()))
                }
                _ => Err(field_err(field, "bigint is outside [-2^63, 2^64)")),
            }
        }
        sys::ValueType::napi_number => {
            let x = unsafe { f64::from_napi_value(env, v) }?;
            if x.fract() != 0.0 || x.abs() > MAX_SAFE {
                return Err(field_err(
                    field,
                    "number is not a safe integer: pass hashes as bigints",
                ));
            }
            Ok(BlockHash::from_i64(x as i64))
        }
        _ => match unsafe { bytes_of(env, v) }? {
            Some(b) => Ok(BlockHash::from_bytes(b)),
            None => Err(field_err(
                field,
                "must be a bigint, a safe integer or a Buffer",
            )),
        },
    }
}

unsafe fn hashes(env: sys::napi_env, v: sys::napi_value, field: &CStr) -> Result<BlockHashes> {
    let items = unsafe { elements(env, v, field) }?;
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        out.push(unsafe { hash(env, e, field) }?);
    }
    Ok(BlockHashes::from_hashes(out))
}

unsafe fn tokens(env: sys::napi_env, v: sys::napi_value, field: &CStr) -> Result<Vec<u32>> {
    if let Some(t) = unsafe { u32s_of(env, v) }? {
        return Ok(t);
    }
    let items = unsafe { elements(env, v, field) }?;
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        out.push(unsafe { uint32(env, e, field) }?);
    }
    Ok(out)
}

unsafe fn token_lists(
    env: sys::napi_env,
    v: sys::napi_value,
    field: &CStr,
) -> Result<Vec<Vec<u32>>> {
    let items = unsafe { elements(env, v, field) }?;
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        out.push(unsafe { tokens(env, e, field) }?);
    }
    Ok(out)
}

unsafe fn medium(env: sys::napi_env, v: sys::napi_value, field: &CStr) -> Result<Medium> {
    unsafe { string(env, v, field) }.map(|s| Medium::parse(&s))
}

unsafe fn mp_value(env: sys::napi_env, v: sys::napi_value, depth: usize) -> Result<Mp> {
    const F: &CStr = c"extraKeys";
    if depth > MAX_DEPTH {
        return Err(field_err(F, "nest too deeply"));
    }
    Ok(match unsafe { type_of(env, v) }? {
        sys::ValueType::napi_undefined | sys::ValueType::napi_null => Mp::Nil,
        sys::ValueType::napi_boolean => Mp::Bool(unsafe { bool::from_napi_value(env, v) }?),
        sys::ValueType::napi_string => Mp::Str(unsafe { String::from_napi_value(env, v) }?),
        sys::ValueType::napi_number => {
            let x = unsafe { f64::from_napi_value(env, v) }?;
            if x.fract() == 0.0 && x.abs() <= MAX_SAFE {
                if x < 0.0 {
                    Mp::Int(x as i64)
                } else {
                    Mp::UInt(x as u64)
                }
            } else {
                Mp::F64(x)
            }
        }
        sys::ValueType::napi_bigint => match unsafe { hash(env, v, F) }? {
            BlockHash::Int(x) => Mp::UInt(x),
            BlockHash::NegInt(x) => Mp::Int(x),
            BlockHash::Bytes(_) => unreachable!("a bigint is never bytes"),
        },
        _ => match unsafe { bytes_of(env, v) }? {
            Some(b) => Mp::Bin(b.to_vec()),
            None => {
                let mut items = Vec::new();
                for e in unsafe { elements(env, v, F) }? {
                    items.push(unsafe { mp_value(env, e, depth + 1) }?);
                }
                Mp::Array(items)
            }
        },
    })
}

unsafe fn extra_keys(
    env: sys::napi_env,
    v: sys::napi_value,
    field: &CStr,
) -> Result<Vec<Option<Vec<Mp>>>> {
    let mut out = Vec::new();
    for e in unsafe { elements(env, v, field) }? {
        let t = unsafe { type_of(env, e) }?;
        if t == sys::ValueType::napi_null || t == sys::ValueType::napi_undefined {
            out.push(None);
            continue;
        }
        let mut items = Vec::new();
        for x in unsafe { elements(env, e, field) }? {
            items.push(unsafe { mp_value(env, x, 1) }?);
        }
        out.push(Some(items));
    }
    Ok(out)
}

unsafe fn read_event(env: sys::napi_env, v: sys::napi_value) -> Result<KvEvent> {
    if unsafe { type_of(env, v) }? != sys::ValueType::napi_object {
        return Err(invalid_input(
            "KV event batch: every event must be an object",
        ));
    }
    let kind = match unsafe { prop(env, v, c"type") }? {
        Some(t) => unsafe { string(env, t, c"type") }?,
        None => return Err(invalid_input("KV event batch: an event has no type")),
    };
    let required = |field: &'static CStr| -> Result<sys::napi_value> {
        unsafe { prop(env, v, field) }?
            .ok_or_else(|| field_err(field, &format!("is required for {kind}")))
    };
    Ok(match kind.as_str() {
        "BlockStored" => KvEvent::BlockStored(BlockStored {
            block_hashes: unsafe { hashes(env, required(c"blockHashes")?, c"blockHashes") }?,
            parent_block_hash: unsafe { opt(env, v, c"parentBlockHash", hash) }?,
            token_ids: unsafe { opt(env, v, c"tokenIds", tokens) }?.unwrap_or_default(),
            block_size: unsafe { uint32(env, required(c"blockSize")?, c"blockSize") }?,
            lora_id: unsafe { opt(env, v, c"loraId", int) }?,
            medium: unsafe { opt(env, v, c"medium", medium) }?,
            lora_name: unsafe { opt(env, v, c"loraName", string) }?,
            extra_keys: unsafe { opt(env, v, c"extraKeys", extra_keys) }?,
            group_idx: unsafe { opt(env, v, c"groupIdx", int) }?,
            kv_cache_spec_kind: unsafe { opt(env, v, c"kvCacheSpecKind", string) }?,
            kv_cache_spec_sliding_window: unsafe { opt(env, v, c"kvCacheSpecSlidingWindow", int) }?,
            locality: unsafe { opt(env, v, c"locality", string) }?,
            ownership: unsafe { opt(env, v, c"ownership", string) }?,
            session_id: unsafe { opt(env, v, c"sessionId", string) }?,
            lookahead_token_ids: unsafe { opt(env, v, c"lookaheadTokenIds", token_lists) }?,
        }),
        "BlockRemoved" => KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: unsafe { hashes(env, required(c"blockHashes")?, c"blockHashes") }?,
            medium: unsafe { opt(env, v, c"medium", medium) }?,
            group_idx: unsafe { opt(env, v, c"groupIdx", int) }?,
            locality: unsafe { opt(env, v, c"locality", string) }?,
            ownership: unsafe { opt(env, v, c"ownership", string) }?,
        }),
        "AllBlocksCleared" => KvEvent::AllBlocksCleared,
        other => {
            return Err(invalid_input(format!(
                "KV event batch: unknown event type '{other}' (expected BlockStored, BlockRemoved or AllBlocksCleared)"
            )))
        }
    })
}

unsafe fn read_batch(env: sys::napi_env, v: sys::napi_value) -> Result<KvEventBatch> {
    if unsafe { type_of(env, v) }? != sys::ValueType::napi_object {
        return Err(invalid_input("KV event batch must be an object"));
    }
    let ts = match unsafe { prop(env, v, c"ts") }? {
        Some(t) => unsafe { number(env, t, c"ts") }?,
        None => return Err(field_err(c"ts", "is required")),
    };
    let Some(events) = unsafe { prop(env, v, c"events") }? else {
        return Err(field_err(c"events", "is required"));
    };
    let mut out = Vec::new();
    for e in unsafe { elements(env, events, c"events") }? {
        out.push(unsafe { read_event(env, e) }?);
    }
    Ok(KvEventBatch {
        ts,
        events: out,
        data_parallel_rank: unsafe { opt(env, v, c"dataParallelRank", int) }?,
        skipped: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

struct Obj {
    env: sys::napi_env,
    raw: sys::napi_value,
}

impl Obj {
    unsafe fn new(env: sys::napi_env) -> Result<Self> {
        let mut raw = ptr::null_mut();
        check(
            unsafe { sys::napi_create_object(env, &mut raw) },
            "create object",
        )?;
        Ok(Obj { env, raw })
    }

    unsafe fn set_raw(&self, name: &CStr, v: sys::napi_value) -> Result<()> {
        check(
            unsafe { sys::napi_set_named_property(self.env, self.raw, name.as_ptr(), v) },
            "set property",
        )
    }

    unsafe fn set<T: ToNapiValue>(&self, name: &CStr, v: T) -> Result<()> {
        let v = unsafe { T::to_napi_value(self.env, v) }?;
        unsafe { self.set_raw(name, v) }
    }
}

unsafe fn array(env: sys::napi_env, items: Vec<sys::napi_value>) -> Result<sys::napi_value> {
    let mut arr = ptr::null_mut();
    check(
        unsafe { sys::napi_create_array_with_length(env, items.len(), &mut arr) },
        "create array",
    )?;
    for (i, x) in items.into_iter().enumerate() {
        check(
            unsafe { sys::napi_set_element(env, arr, i as u32, x) },
            "set element",
        )?;
    }
    Ok(arr)
}

unsafe fn hash_value(env: sys::napi_env, h: &BlockHash) -> Result<sys::napi_value> {
    match h {
        BlockHash::Int(x) => unsafe { BigInt::to_napi_value(env, BigInt::from(*x)) },
        BlockHash::NegInt(x) => unsafe { BigInt::to_napi_value(env, BigInt::from(*x)) },
        BlockHash::Bytes(b) => unsafe {
            Buffer::to_napi_value(env, Buffer::from(b.as_slice().to_vec()))
        },
    }
}

unsafe fn hashes_value(env: sys::napi_env, h: &BlockHashes) -> Result<sys::napi_value> {
    let mut items = Vec::with_capacity(h.len());
    for x in h.iter() {
        items.push(unsafe { hash_value(env, &x) }?);
    }
    unsafe { array(env, items) }
}

fn safe_number(x: f64) -> bool {
    x.abs() <= MAX_SAFE
}

unsafe fn mp_out(env: sys::napi_env, v: &Mp) -> Result<sys::napi_value> {
    unsafe {
        match v {
            Mp::Nil | Mp::Ext(..) => <Option<u32>>::to_napi_value(env, None),
            Mp::Bool(b) => bool::to_napi_value(env, *b),
            Mp::UInt(x) if safe_number(*x as f64) => f64::to_napi_value(env, *x as f64),
            Mp::UInt(x) => BigInt::to_napi_value(env, BigInt::from(*x)),
            Mp::Int(x) if safe_number(*x as f64) => f64::to_napi_value(env, *x as f64),
            Mp::Int(x) => BigInt::to_napi_value(env, BigInt::from(*x)),
            Mp::F32(x) => f64::to_napi_value(env, *x as f64),
            Mp::F64(x) => f64::to_napi_value(env, *x),
            Mp::Str(s) => String::to_napi_value(env, s.clone()),
            Mp::Bin(b) => Buffer::to_napi_value(env, Buffer::from(b.clone())),
            Mp::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for x in items {
                    out.push(mp_out(env, x)?);
                }
                array(env, out)
            }
            // vLLM never puts maps in extra keys: given as [key, value] pairs.
            Mp::Map(pairs) => {
                let mut out = Vec::with_capacity(pairs.len());
                for (k, x) in pairs {
                    out.push(array(env, vec![mp_out(env, k)?, mp_out(env, x)?])?);
                }
                array(env, out)
            }
        }
    }
}

unsafe fn opt_out<T: ToNapiValue>(o: &Obj, name: &CStr, v: Option<T>) -> Result<()> {
    unsafe { o.set(name, v) }
}

unsafe fn write_event(env: sys::napi_env, ev: &KvEvent) -> Result<sys::napi_value> {
    let o = unsafe { Obj::new(env) }?;
    unsafe {
        o.set(c"type", ev.type_name())?;
        match ev {
            KvEvent::BlockStored(e) => {
                o.set_raw(c"blockHashes", hashes_value(env, &e.block_hashes)?)?;
                match &e.parent_block_hash {
                    Some(p) => o.set_raw(c"parentBlockHash", hash_value(env, p)?)?,
                    None => opt_out::<u32>(&o, c"parentBlockHash", None)?,
                }
                o.set(c"tokenIds", e.token_ids.clone())?;
                o.set(c"blockSize", e.block_size)?;
                opt_out(&o, c"loraId", e.lora_id.map(|x| x as f64))?;
                opt_out(
                    &o,
                    c"medium",
                    e.medium.as_ref().map(|m| m.as_str().to_owned()),
                )?;
                opt_out(&o, c"loraName", e.lora_name.clone())?;
                match &e.extra_keys {
                    None => opt_out::<u32>(&o, c"extraKeys", None)?,
                    Some(keys) => {
                        let mut out = Vec::with_capacity(keys.len());
                        for k in keys {
                            out.push(match k {
                                None => <Option<u32>>::to_napi_value(env, None)?,
                                Some(items) => mp_out(env, &Mp::Array(items.clone()))?,
                            });
                        }
                        o.set_raw(c"extraKeys", array(env, out)?)?;
                    }
                }
                opt_out(&o, c"groupIdx", e.group_idx.map(|x| x as f64))?;
                opt_out(&o, c"kvCacheSpecKind", e.kv_cache_spec_kind.clone())?;
                opt_out(
                    &o,
                    c"kvCacheSpecSlidingWindow",
                    e.kv_cache_spec_sliding_window.map(|x| x as f64),
                )?;
                opt_out(&o, c"locality", e.locality.clone())?;
                opt_out(&o, c"ownership", e.ownership.clone())?;
                opt_out(&o, c"sessionId", e.session_id.clone())?;
                opt_out(&o, c"lookaheadTokenIds", e.lookahead_token_ids.clone())?;
            }
            KvEvent::BlockRemoved(e) => {
                o.set_raw(c"blockHashes", hashes_value(env, &e.block_hashes)?)?;
                opt_out(
                    &o,
                    c"medium",
                    e.medium.as_ref().map(|m| m.as_str().to_owned()),
                )?;
                opt_out(&o, c"groupIdx", e.group_idx.map(|x| x as f64))?;
                opt_out(&o, c"locality", e.locality.clone())?;
                opt_out(&o, c"ownership", e.ownership.clone())?;
            }
            KvEvent::AllBlocksCleared => {}
        }
    }
    Ok(o.raw)
}

unsafe fn write_batch(env: sys::napi_env, b: &KvEventBatch) -> Result<sys::napi_value> {
    let o = unsafe { Obj::new(env) }?;
    unsafe {
        o.set(c"ts", b.ts)?;
        opt_out(
            &o,
            c"dataParallelRank",
            b.data_parallel_rank.map(|x| x as f64),
        )?;
        let mut events = Vec::with_capacity(b.events.len());
        for e in &b.events {
            events.push(write_event(env, e)?);
        }
        o.set_raw(c"events", array(env, events)?)?;
        let mut skipped = Vec::with_capacity(b.skipped.len());
        for s in &b.skipped {
            let x = Obj::new(env)?;
            x.set(c"index", s.index as u32)?;
            x.set(c"reason", s.reason)?;
            opt_out(&x, c"tag", s.tag.clone())?;
            skipped.push(x.raw);
        }
        o.set_raw(c"skipped", array(env, skipped)?)?;
    }
    Ok(o.raw)
}
