//! Decoding and encoding of `KVEventBatch` payloads (see the module docs in `mod.rs`).

use super::msgpack::{Int, Kind, MpError, MpResult, Reader, Writer};
use super::{
    BlockHash, BlockHashes, BlockRemoved, BlockStored, DecodeError, ExtraKeys, HashBytes, KvEvent,
    KvEventBatch, Medium, SkippedEvent, WireFormat, BLOCK_REMOVED_FIELDS, BLOCK_REMOVED_REQUIRED,
    BLOCK_STORED_FIELDS, BLOCK_STORED_REQUIRED,
};

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

fn batch_err(e: MpError) -> DecodeError {
    DecodeError {
        reason: e.reason,
        event_index: None,
        offset: e.offset,
    }
}

fn batch_fail<T>(reason: &'static str, r: &Reader<'_>) -> Result<T, DecodeError> {
    Err(DecodeError {
        reason,
        event_index: None,
        offset: r.pos(),
    })
}

/// Decode one `KVEventBatch` payload, of any released vLLM form.
///
/// Unknown or malformed individual events are skipped and listed in
/// [`KvEventBatch::skipped`]; anything that breaks the batch itself is an error (see the
/// failure policy in the module docs).
pub fn decode_batch(payload: &[u8]) -> Result<KvEventBatch, DecodeError> {
    let mut r = Reader::new(payload);
    let batch = match r.peek_kind().map_err(batch_err)? {
        Kind::Array => decode_array_batch(&mut r)?,
        Kind::Map => decode_map_batch(&mut r)?,
        _ => return batch_fail("batch must be an array or a map", &r),
    };
    if !r.is_empty() {
        return batch_fail("trailing bytes after the batch", &r);
    }
    Ok(batch)
}

fn decode_array_batch(r: &mut Reader<'_>) -> Result<KvEventBatch, DecodeError> {
    let n = r.read_array_len().map_err(batch_err)?;
    if n < 2 {
        return batch_fail("batch array needs at least ts and events", r);
    }
    let ts = r.read_f64().map_err(batch_err)?;
    let mut batch = KvEventBatch {
        ts,
        ..Default::default()
    };
    decode_events(r, &mut batch)?;
    if n >= 3 {
        batch.data_parallel_rank = read_dp_rank(r)?;
    }
    for _ in 3..n {
        r.skip_value().map_err(batch_err)?;
    }
    Ok(batch)
}

fn decode_map_batch(r: &mut Reader<'_>) -> Result<KvEventBatch, DecodeError> {
    let n = r.read_map_len().map_err(batch_err)?;
    let mut batch = KvEventBatch::default();
    let (mut has_ts, mut has_events) = (false, false);
    for _ in 0..n {
        let key = if r.peek_kind().map_err(batch_err)? == Kind::Str {
            r.read_str_bytes().map_err(batch_err)?
        } else {
            r.skip_value().map_err(batch_err)?;
            b""
        };
        match key {
            b"ts" => {
                batch.ts = r.read_f64().map_err(batch_err)?;
                has_ts = true;
            }
            b"events" => {
                if has_events {
                    return batch_fail("duplicate events key", r);
                }
                decode_events(r, &mut batch)?;
                has_events = true;
            }
            b"data_parallel_rank" => batch.data_parallel_rank = read_dp_rank(r)?,
            _ => r.skip_value().map_err(batch_err)?,
        }
    }
    if !has_ts {
        return batch_fail("batch map has no ts", r);
    }
    if !has_events {
        return batch_fail("batch map has no events", r);
    }
    Ok(batch)
}

fn read_dp_rank(r: &mut Reader<'_>) -> Result<Option<i64>, DecodeError> {
    if r.try_nil().map_err(batch_err)? {
        return Ok(None);
    }
    r.read_i64().map(Some).map_err(|e| DecodeError {
        reason: "data_parallel_rank must be an integer or nil",
        event_index: None,
        offset: e.offset,
    })
}

fn decode_events(r: &mut Reader<'_>, batch: &mut KvEventBatch) -> Result<(), DecodeError> {
    let n = r.read_array_len().map_err(|e| DecodeError {
        reason: if e.reason == "expected an array" {
            "events must be an array"
        } else {
            e.reason
        },
        event_index: None,
        offset: e.offset,
    })?;
    batch.events.reserve(n);
    for i in 0..n {
        let start = r.pos();
        let len = batch.events.len();
        // Events are built in place in `batch.events` (they are large; no moves).
        if let Err(e) = decode_event(r, &mut batch.events) {
            batch.events.truncate(len);
            // Find the event's extent; if even that fails the batch is unreadable.
            r.rewind(start);
            r.skip_value().map_err(|me| DecodeError {
                reason: me.reason,
                event_index: Some(i),
                offset: me.offset,
            })?;
            batch.skipped.push(SkippedEvent {
                index: i,
                reason: e.reason,
                tag: e.tag,
            });
        }
    }
    Ok(())
}

/// Why one event was skipped.
struct EvErr {
    reason: &'static str,
    tag: Option<String>,
}

impl From<MpError> for EvErr {
    fn from(e: MpError) -> Self {
        EvErr {
            reason: e.reason,
            tag: None,
        }
    }
}

fn ev_err<T>(reason: &'static str) -> Result<T, EvErr> {
    Err(EvErr { reason, tag: None })
}

#[derive(Clone, Copy)]
enum Tag {
    Stored,
    Removed,
    Cleared,
}

impl Tag {
    fn name(self) -> &'static str {
        match self {
            Tag::Stored => "BlockStored",
            Tag::Removed => "BlockRemoved",
            Tag::Cleared => "AllBlocksCleared",
        }
    }
}

fn parse_tag(r: &mut Reader<'_>) -> Result<Tag, EvErr> {
    if r.peek_kind()? != Kind::Str {
        return ev_err("event type tag must be a string");
    }
    let b = r.read_str_bytes()?;
    match b {
        b"BlockStored" => Ok(Tag::Stored),
        b"BlockRemoved" => Ok(Tag::Removed),
        b"AllBlocksCleared" => Ok(Tag::Cleared),
        _ => Err(EvErr {
            reason: "unknown event type",
            tag: Some(String::from_utf8_lossy(b).into_owned()),
        }),
    }
}

/// An event slot pushed onto `out`, to be filled in place.
enum Slot<'v> {
    Stored(&'v mut BlockStored),
    Removed(&'v mut BlockRemoved),
    Cleared,
}

fn push_slot(out: &mut Vec<KvEvent>, tag: Tag) -> Slot<'_> {
    out.push(match tag {
        Tag::Stored => KvEvent::BlockStored(BlockStored::default()),
        Tag::Removed => KvEvent::BlockRemoved(BlockRemoved::default()),
        Tag::Cleared => KvEvent::AllBlocksCleared,
    });
    match out.last_mut() {
        Some(KvEvent::BlockStored(e)) => Slot::Stored(e),
        Some(KvEvent::BlockRemoved(e)) => Slot::Removed(e),
        _ => Slot::Cleared,
    }
}

fn with_tag<T>(tag: Tag, res: Result<T, EvErr>) -> Result<T, EvErr> {
    res.map_err(|mut e| {
        e.tag = Some(tag.name().to_owned());
        e
    })
}

/// Decode one event onto the end of `out` (on error, `out` may hold a partial event: the caller
/// truncates).
fn decode_event(r: &mut Reader<'_>, out: &mut Vec<KvEvent>) -> Result<(), EvErr> {
    match r.peek_kind()? {
        Kind::Array => {
            let n = r.read_array_len()?;
            if n == 0 {
                return ev_err("event array is empty");
            }
            let tag = parse_tag(r)?;
            with_tag(tag, decode_array_body(r, push_slot(out, tag), n - 1))
        }
        Kind::Map => decode_map_event(r, out),
        _ => ev_err("event must be an array or a map"),
    }
}

fn decode_array_body(r: &mut Reader<'_>, slot: Slot<'_>, fields: usize) -> Result<(), EvErr> {
    match slot {
        Slot::Stored(e) => {
            if fields < 4 {
                return ev_err("BlockStored array is missing fields");
            }
            for i in 0..fields {
                read_stored_field(r, i, e)?;
            }
        }
        Slot::Removed(e) => {
            if fields < 1 {
                return ev_err("BlockRemoved array is missing fields");
            }
            for i in 0..fields {
                read_removed_field(r, i, e)?;
            }
        }
        Slot::Cleared => {
            for _ in 0..fields {
                r.skip_value()?;
            }
        }
    }
    Ok(())
}

fn decode_map_event(r: &mut Reader<'_>, out: &mut Vec<KvEvent>) -> Result<(), EvErr> {
    let n = r.read_map_len()?;
    if n == 0 {
        return ev_err("event map has no type");
    }
    let body = r.pos();
    // msgspec writes the tag first; anything else gets a scan for it.
    let first_is_type = r.peek_kind()? == Kind::Str && {
        let save = r.pos();
        let is = r.read_str_bytes()? == b"type";
        if !is {
            r.rewind(save);
        }
        is
    };
    let (tag, remaining) = if first_is_type {
        (parse_tag(r)?, n - 1)
    } else {
        let mut tag = None;
        for _ in 0..n {
            let is_type = if r.peek_kind()? == Kind::Str {
                r.read_str_bytes()? == b"type"
            } else {
                r.skip_value()?;
                false
            };
            if is_type {
                tag = Some(parse_tag(r)?);
                break;
            }
            r.skip_value()?;
        }
        r.rewind(body);
        match tag {
            Some(t) => (t, n),
            None => return ev_err("event map has no type"),
        }
    };
    with_tag(tag, decode_map_body(r, push_slot(out, tag), remaining))
}

fn decode_map_body(r: &mut Reader<'_>, slot: Slot<'_>, pairs: usize) -> Result<(), EvErr> {
    let fields: &[&str] = match slot {
        Slot::Stored(_) => &BLOCK_STORED_FIELDS,
        Slot::Removed(_) => &BLOCK_REMOVED_FIELDS,
        Slot::Cleared => &[],
    };
    let mut slot = slot;
    let mut seen: u32 = 0;
    let mut next = 0usize; // msgspec writes fields in declaration order: try that one first
    for _ in 0..pairs {
        let idx = if r.peek_kind()? == Kind::Str {
            let k = r.read_str_bytes()?;
            match fields.get(next) {
                Some(f) if f.as_bytes() == k => Some(next),
                _ => fields.iter().position(|f| f.as_bytes() == k),
            }
        } else {
            r.skip_value()?;
            None
        };
        match idx {
            Some(i) => {
                if seen & (1 << i) != 0 {
                    return ev_err("duplicate field");
                }
                seen |= 1 << i;
                next = i + 1;
                match &mut slot {
                    Slot::Stored(e) => read_stored_field(r, i, e)?,
                    Slot::Removed(e) => read_removed_field(r, i, e)?,
                    Slot::Cleared => r.skip_value()?,
                }
            }
            None => r.skip_value()?, // "type" (when not first) and fields we do not know
        }
    }
    match slot {
        // block_hashes, token_ids, block_size
        Slot::Stored(_) if seen & 0b1101 != 0b1101 => {
            ev_err("BlockStored map is missing a required field")
        }
        Slot::Removed(_) if seen & 1 == 0 => ev_err("BlockRemoved map has no block_hashes"),
        _ => Ok(()),
    }
}

fn read_stored_field(r: &mut Reader<'_>, i: usize, e: &mut BlockStored) -> Result<(), EvErr> {
    match i {
        0 => e.block_hashes = read_hashes(r)?,
        1 => e.parent_block_hash = opt(r, read_hash)?,
        2 => e.token_ids = read_u32_list(r)?,
        3 => e.block_size = r.read_u32()?,
        4 => e.lora_id = opt(r, |r| r.read_i64())?,
        5 => e.medium = opt(r, read_medium)?,
        6 => e.lora_name = opt_string(r)?,
        7 => e.extra_keys = opt(r, read_extra_keys)?,
        8 => e.group_idx = opt(r, |r| r.read_i64())?,
        9 => e.kv_cache_spec_kind = opt_string(r)?,
        10 => e.kv_cache_spec_sliding_window = opt(r, |r| r.read_i64())?,
        11 => e.locality = opt_string(r)?,
        12 => e.ownership = opt_string(r)?,
        13 => e.session_id = opt_string(r)?,
        14 => {
            e.lookahead_token_ids = opt(r, |r| {
                let n = r.read_array_len()?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(read_u32_list(r)?);
                }
                Ok(v)
            })?
        }
        _ => r.skip_value()?,
    }
    Ok(())
}

fn read_removed_field(r: &mut Reader<'_>, i: usize, e: &mut BlockRemoved) -> Result<(), EvErr> {
    match i {
        0 => e.block_hashes = read_hashes(r)?,
        1 => e.medium = opt(r, read_medium)?,
        2 => e.group_idx = opt(r, |r| r.read_i64())?,
        3 => e.locality = opt_string(r)?,
        4 => e.ownership = opt_string(r)?,
        _ => r.skip_value()?,
    }
    Ok(())
}

#[inline]
fn opt<T>(
    r: &mut Reader<'_>,
    f: impl FnOnce(&mut Reader<'_>) -> MpResult<T>,
) -> MpResult<Option<T>> {
    if r.try_nil()? {
        Ok(None)
    } else {
        f(r).map(Some)
    }
}

#[inline]
fn read_medium(r: &mut Reader<'_>) -> MpResult<Medium> {
    let save = r.pos();
    match r.read_str_bytes()? {
        b"GPU" => Ok(Medium::Gpu),
        b"CPU" => Ok(Medium::Cpu),
        _ => {
            r.rewind(save);
            r.read_str().map(|s| Medium::Other(s.into()))
        }
    }
}

#[inline]
fn opt_string(r: &mut Reader<'_>) -> MpResult<Option<String>> {
    opt(r, |r| r.read_str().map(str::to_owned))
}

#[inline]
fn read_hash(r: &mut Reader<'_>) -> MpResult<BlockHash> {
    match r.peek_kind()? {
        Kind::Int => Ok(match r.read_int()? {
            Int::UInt(v) => BlockHash::Int(v),
            Int::Int(v) => BlockHash::NegInt(v),
        }),
        Kind::Bin => Ok(BlockHash::Bytes(HashBytes::new(r.read_bin()?))),
        _ => Err(MpError {
            reason: "block hash must be an int or bytes",
            offset: r.pos(),
        }),
    }
}

#[inline]
fn read_hashes(r: &mut Reader<'_>) -> MpResult<BlockHashes> {
    let n = r.read_array_len()?;
    let mut h = BlockHashes::with_capacity(n);
    for _ in 0..n {
        if let Some(v) = r.try_read_uint() {
            h.push_int(v);
            continue;
        }
        match r.peek_kind()? {
            Kind::Int => match r.read_int()? {
                Int::UInt(v) => h.push_int(v),
                Int::Int(v) => h.push_form(BlockHash::NegInt(v)),
            },
            _ => h.push_form(read_hash(r)?),
        }
    }
    Ok(h)
}

#[inline]
fn read_u32_list(r: &mut Reader<'_>) -> MpResult<Vec<u32>> {
    let n = r.read_array_len()?;
    r.read_u32s(n)
}

fn read_extra_keys(r: &mut Reader<'_>) -> MpResult<ExtraKeys> {
    let n = r.read_array_len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if r.try_nil()? {
            out.push(None);
            continue;
        }
        let m = r.read_array_len()?;
        let mut items = Vec::with_capacity(m);
        for _ in 0..m {
            items.push(r.read_value()?);
        }
        out.push(Some(items));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Encode a batch exactly as vLLM's publisher does for releases using `format`. Fields the
/// format does not have are dropped; `skipped` is ignored; for [`WireFormat::V0_9_0`] the DP
/// rank cannot be represented and is dropped.
pub fn encode_batch(batch: &KvEventBatch, format: WireFormat) -> Vec<u8> {
    let estimate: usize = 16
        + batch
            .events
            .iter()
            .map(|e| match e {
                KvEvent::BlockStored(s) => 96 + 9 * s.block_hashes.len() + 5 * s.token_ids.len(),
                KvEvent::BlockRemoved(s) => 48 + 9 * s.block_hashes.len(),
                KvEvent::AllBlocksCleared => 24,
            })
            .sum::<usize>();
    let mut w = Writer::with_capacity(estimate);
    let dp = format.has_dp_rank();
    w.array_len(if dp { 3 } else { 2 });
    w.f64(batch.ts);
    w.array_len(batch.events.len());
    for ev in &batch.events {
        encode_event(&mut w, ev, format);
    }
    if dp {
        match batch.data_parallel_rank {
            Some(v) => w.int(v),
            None => w.nil(),
        }
    }
    w.into_inner()
}

fn encode_event(w: &mut Writer, ev: &KvEvent, format: WireFormat) {
    let maps = format.events_as_maps();
    match ev {
        KvEvent::BlockStored(e) => {
            let n = format.stored_field_count();
            if maps {
                let present = (0..n).filter(|&i| i < BLOCK_STORED_REQUIRED || stored_has(e, i));
                w.map_header_sized_for(1 + present.count(), 1 + n);
                w.str("type");
                w.str("BlockStored");
                for (i, name) in BLOCK_STORED_FIELDS[..n].iter().enumerate() {
                    if i < BLOCK_STORED_REQUIRED || stored_has(e, i) {
                        w.str(name);
                        write_stored_field(w, e, i);
                    }
                }
            } else {
                w.array_len(1 + n);
                w.str("BlockStored");
                for i in 0..n {
                    write_stored_field(w, e, i);
                }
            }
        }
        KvEvent::BlockRemoved(e) => {
            let n = format.removed_field_count();
            if maps {
                let present = (0..n).filter(|&i| i < BLOCK_REMOVED_REQUIRED || removed_has(e, i));
                w.map_header_sized_for(1 + present.count(), 1 + n);
                w.str("type");
                w.str("BlockRemoved");
                for (i, name) in BLOCK_REMOVED_FIELDS[..n].iter().enumerate() {
                    if i < BLOCK_REMOVED_REQUIRED || removed_has(e, i) {
                        w.str(name);
                        write_removed_field(w, e, i);
                    }
                }
            } else {
                w.array_len(1 + n);
                w.str("BlockRemoved");
                for i in 0..n {
                    write_removed_field(w, e, i);
                }
            }
        }
        KvEvent::AllBlocksCleared => {
            if maps {
                w.map_header_sized_for(1, 1);
                w.str("type");
            } else {
                w.array_len(1);
            }
            w.str("AllBlocksCleared");
        }
    }
}

/// Whether a defaulted `BlockStored` field is set (map form omits it otherwise).
fn stored_has(e: &BlockStored, i: usize) -> bool {
    match i {
        7 => e.extra_keys.is_some(),
        8 => e.group_idx.is_some(),
        9 => e.kv_cache_spec_kind.is_some(),
        10 => e.kv_cache_spec_sliding_window.is_some(),
        11 => e.locality.is_some(),
        12 => e.ownership.is_some(),
        13 => e.session_id.is_some(),
        14 => e.lookahead_token_ids.is_some(),
        _ => true,
    }
}

fn removed_has(e: &BlockRemoved, i: usize) -> bool {
    match i {
        2 => e.group_idx.is_some(),
        3 => e.locality.is_some(),
        4 => e.ownership.is_some(),
        _ => true,
    }
}

fn write_hash(w: &mut Writer, h: &BlockHash) {
    match h {
        BlockHash::Int(v) => w.uint(*v),
        BlockHash::NegInt(v) => w.int(*v),
        BlockHash::Bytes(b) => w.bin(b.as_slice()),
    }
}

fn write_hashes(w: &mut Writer, h: &BlockHashes) {
    w.array_len(h.len());
    if h.all_ints() {
        for &k in h.keys() {
            w.uint(k);
        }
    } else {
        for x in h.iter() {
            write_hash(w, &x);
        }
    }
}

fn write_u32s(w: &mut Writer, v: &[u32]) {
    w.array_len(v.len());
    for &t in v {
        w.uint(t as u64);
    }
}

fn write_opt_str(w: &mut Writer, s: Option<&str>) {
    match s {
        Some(s) => w.str(s),
        None => w.nil(),
    }
}

fn write_opt_int(w: &mut Writer, v: Option<i64>) {
    match v {
        Some(v) => w.int(v),
        None => w.nil(),
    }
}

fn write_stored_field(w: &mut Writer, e: &BlockStored, i: usize) {
    match i {
        0 => write_hashes(w, &e.block_hashes),
        1 => match &e.parent_block_hash {
            Some(h) => write_hash(w, h),
            None => w.nil(),
        },
        2 => write_u32s(w, &e.token_ids),
        3 => w.uint(e.block_size as u64),
        4 => write_opt_int(w, e.lora_id),
        5 => write_opt_str(w, e.medium.as_ref().map(Medium::as_str)),
        6 => write_opt_str(w, e.lora_name.as_deref()),
        7 => match &e.extra_keys {
            Some(keys) => {
                w.array_len(keys.len());
                for k in keys {
                    match k {
                        Some(items) => {
                            w.array_len(items.len());
                            for v in items {
                                w.value(v);
                            }
                        }
                        None => w.nil(),
                    }
                }
            }
            None => w.nil(),
        },
        8 => write_opt_int(w, e.group_idx),
        9 => write_opt_str(w, e.kv_cache_spec_kind.as_deref()),
        10 => write_opt_int(w, e.kv_cache_spec_sliding_window),
        11 => write_opt_str(w, e.locality.as_deref()),
        12 => write_opt_str(w, e.ownership.as_deref()),
        13 => write_opt_str(w, e.session_id.as_deref()),
        14 => match &e.lookahead_token_ids {
            Some(v) => {
                w.array_len(v.len());
                for t in v {
                    write_u32s(w, t);
                }
            }
            None => w.nil(),
        },
        _ => w.nil(),
    }
}

fn write_removed_field(w: &mut Writer, e: &BlockRemoved, i: usize) {
    match i {
        0 => write_hashes(w, &e.block_hashes),
        1 => write_opt_str(w, e.medium.as_ref().map(Medium::as_str)),
        2 => write_opt_int(w, e.group_idx),
        3 => write_opt_str(w, e.locality.as_deref()),
        4 => write_opt_str(w, e.ownership.as_deref()),
        _ => w.nil(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::msgpack::Writer;
    use super::*;

    fn stored(keys: &[u64], tokens: usize) -> KvEvent {
        KvEvent::BlockStored(BlockStored {
            block_hashes: BlockHashes::from_keys(keys.to_vec()),
            parent_block_hash: Some(BlockHash::Int(7)),
            token_ids: (0..tokens as u32).collect(),
            block_size: 16,
            medium: Some(Medium::Gpu),
            ..Default::default()
        })
    }

    #[test]
    fn roundtrip_every_format() {
        let batch = KvEventBatch {
            ts: 1.5,
            events: vec![
                stored(&[1, u64::MAX], 32),
                KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: BlockHashes::from_hashes(vec![
                        BlockHash::NegInt(-3),
                        BlockHash::from_bytes(&[1; 32]),
                    ]),
                    medium: Some(Medium::Other("cpu".into())),
                    group_idx: Some(1),
                    ..Default::default()
                }),
                KvEvent::AllBlocksCleared,
            ],
            data_parallel_rank: Some(2),
            skipped: vec![],
        };
        for f in WireFormat::ALL {
            let bytes = encode_batch(&batch, f);
            let back = decode_batch(&bytes).unwrap();
            assert!(back.skipped.is_empty());
            assert_eq!(encode_batch(&back, f), bytes, "{f:?}");
            assert_eq!(back.events.len(), 3);
            assert_eq!(back.events[0].block_keys(), &[1, u64::MAX]);
            assert_eq!(
                back.events[1].block_keys(),
                &[(-3i64) as u64, 0x0101010101010101]
            );
            assert_eq!(
                back.data_parallel_rank,
                if f.has_dp_rank() { Some(2) } else { None }
            );
        }
    }

    #[test]
    fn unknown_event_is_skipped_not_fatal() {
        let mut w = Writer::new();
        w.array_len(3);
        w.f64(2.0);
        w.array_len(3);
        // known
        w.array_len(1);
        w.str("AllBlocksCleared");
        // unknown, array form
        w.array_len(3);
        w.str("BlockPinned");
        w.array_len(1);
        w.uint(5);
        w.nil();
        // unknown, map form
        w.map_len(2);
        w.str("type");
        w.str("Future");
        w.str("x");
        w.uint(1);
        w.uint(4);
        let b = decode_batch(w.as_slice()).unwrap();
        assert_eq!(b.events, vec![KvEvent::AllBlocksCleared]);
        assert_eq!(b.data_parallel_rank, Some(4));
        assert_eq!(b.skipped.len(), 2);
        assert_eq!(b.skipped[0].index, 1);
        assert_eq!(b.skipped[0].tag.as_deref(), Some("BlockPinned"));
        assert_eq!(b.skipped[1].reason, "unknown event type");
    }

    #[test]
    fn malformed_known_event_is_skipped_with_its_tag() {
        let mut w = Writer::new();
        w.array_len(3);
        w.f64(2.0);
        w.array_len(2);
        w.array_len(5);
        w.str("BlockStored");
        w.array_len(1);
        w.str("not a hash");
        w.nil();
        w.array_len(0);
        w.uint(16);
        w.array_len(2);
        w.str("BlockRemoved");
        w.array_len(1);
        w.uint(9);
        w.nil();
        let b = decode_batch(w.as_slice()).unwrap();
        assert_eq!(b.events.len(), 1);
        assert_eq!(b.events[0].block_keys(), &[9]);
        assert_eq!(b.skipped[0].reason, "block hash must be an int or bytes");
        assert_eq!(b.skipped[0].tag.as_deref(), Some("BlockStored"));
    }

    #[test]
    fn map_event_fields_in_any_order_and_map_batch() {
        let mut w = Writer::new();
        w.map_len(3);
        w.str("events");
        w.array_len(1);
        w.map_len(5);
        w.str("token_ids");
        w.array_len(1);
        w.uint(70000);
        w.str("block_size");
        w.uint(1);
        w.str("type");
        w.str("BlockStored");
        w.str("block_hashes");
        w.array_len(1);
        w.bin(&[0xaa; 16]);
        w.str("brand_new_field");
        w.map_len(0);
        w.str("ts");
        w.f64(3.25);
        w.str("data_parallel_rank");
        w.nil();
        let b = decode_batch(w.as_slice()).unwrap();
        assert_eq!(b.ts, 3.25);
        assert_eq!(b.data_parallel_rank, None);
        let KvEvent::BlockStored(s) = &b.events[0] else {
            panic!()
        };
        assert_eq!(s.token_ids, vec![70000]);
        assert_eq!(s.block_hashes.keys(), &[0xaaaa_aaaa_aaaa_aaaa]);
        assert_eq!(s.parent_block_hash, None);
    }

    #[test]
    fn batch_level_failures() {
        assert_eq!(decode_batch(&[]).unwrap_err().reason, "truncated");
        assert_eq!(
            decode_batch(&[0x01]).unwrap_err().reason,
            "batch must be an array or a map"
        );
        // [1.0, []] + trailing byte
        let ok = [0x92, 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x90];
        assert!(decode_batch(&ok).is_ok());
        let mut trailing = ok.to_vec();
        trailing.push(0xc0);
        assert_eq!(
            decode_batch(&trailing).unwrap_err().reason,
            "trailing bytes after the batch"
        );
        // events not an array
        let bad = [0x92, 0x01, 0xc0];
        assert_eq!(
            decode_batch(&bad).unwrap_err().reason,
            "events must be an array"
        );
        // ts not a number
        let bad = [0x92, 0xa1, b'x', 0x90];
        assert_eq!(decode_batch(&bad).unwrap_err().reason, "expected a number");
        // truncated inside event 0
        let bad = [0x92, 0x01, 0x91, 0x92, 0xab];
        let e = decode_batch(&bad).unwrap_err();
        assert_eq!(e.event_index, Some(0));
        // dp rank wrong type
        let bad = [0x93, 0x01, 0x90, 0xa1, b'x'];
        assert_eq!(
            decode_batch(&bad).unwrap_err().reason,
            "data_parallel_rank must be an integer or nil"
        );
    }
}
