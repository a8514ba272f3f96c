//! A minimal MessagePack reader and writer: just what vLLM's KV event payloads need.
//!
//! The [`Reader`] works over a borrowed `&[u8]` and never panics: every read is bounds-checked,
//! every declared length is checked against the bytes that remain (an array of `n` elements needs
//! at least `n` bytes, a map at least `2n`) before anything is allocated, skipping is iterative,
//! and building a generic [`Value`] is depth-limited ([`MAX_DEPTH`]).
//!
//! The [`Writer`] always picks the smallest encoding, which is what msgspec does:
//! non-negative integers as positive fixint / uint8..uint64, negative ones as negative fixint /
//! int8..int64, floats as float64, strings as fixstr / str8 / str16 / str32, bytes as
//! bin8 / bin16 / bin32, arrays and maps as fix / 16 / 32.

use std::fmt;

/// Deepest nesting [`Reader::read_value`] accepts (vLLM's deepest generic value is 3 levels).
pub const MAX_DEPTH: usize = 32;

/// What went wrong while reading, and where (byte offset into the buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpError {
    pub reason: &'static str,
    pub offset: usize,
}

impl fmt::Display for MpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

impl std::error::Error for MpError {}

pub type MpResult<T> = Result<T, MpError>;

/// A MessagePack integer as it was on the wire: `UInt` for the non-negative encodings
/// (positive fixint, uint8..64, and int8..64 holding a non-negative value), `Int` for negatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Int {
    UInt(u64),
    Int(i64),
}

/// A generic MessagePack value (used for `extra_keys`, whose items are free-form).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    F32(f32),
    F64(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Ext(i8, Vec<u8>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i128(&self) -> Option<i128> {
        match *self {
            Value::UInt(v) => Some(v as i128),
            Value::Int(v) => Some(v as i128),
            _ => None,
        }
    }
    pub fn as_bin(&self) -> Option<&[u8]> {
        match self {
            Value::Bin(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The broad kind of the next value, from its marker byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nil,
    Bool,
    Int,
    Float,
    Str,
    Bin,
    Array,
    Map,
    Ext,
    /// 0xc1, which MessagePack never uses.
    Reserved,
}

/// The kind of value a marker byte starts.
#[inline]
pub fn kind_of(marker: u8) -> Kind {
    match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => Kind::Int,
        0x80..=0x8f | 0xde | 0xdf => Kind::Map,
        0x90..=0x9f | 0xdc | 0xdd => Kind::Array,
        0xa0..=0xbf | 0xd9..=0xdb => Kind::Str,
        0xc0 => Kind::Nil,
        0xc2 | 0xc3 => Kind::Bool,
        0xc4..=0xc6 => Kind::Bin,
        0xca | 0xcb => Kind::Float,
        0xc7..=0xc9 | 0xd4..=0xd8 => Kind::Ext,
        0xc1 => Kind::Reserved,
    }
}

/// Bounds-checked MessagePack reader over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Move to an earlier position (one this reader returned from [`Reader::pos`]).
    #[inline]
    pub fn rewind(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    #[inline]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn err<T>(&self, reason: &'static str) -> MpResult<T> {
        Err(MpError {
            reason,
            offset: self.pos,
        })
    }

    /// The next marker byte, not consumed.
    #[inline]
    pub fn peek(&self) -> MpResult<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => Ok(b),
            None => self.err("truncated"),
        }
    }

    #[inline]
    pub fn peek_kind(&self) -> MpResult<Kind> {
        self.peek().map(kind_of)
    }

    #[inline]
    fn byte(&mut self) -> MpResult<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> MpResult<&'a [u8]> {
        if n > self.remaining() {
            return self.err("truncated");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn be<const N: usize>(&mut self) -> MpResult<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    fn len8(&mut self) -> MpResult<usize> {
        Ok(self.byte()? as usize)
    }
    #[inline]
    fn len16(&mut self) -> MpResult<usize> {
        Ok(u16::from_be_bytes(self.be::<2>()?) as usize)
    }
    #[inline]
    fn len32(&mut self) -> MpResult<usize> {
        Ok(u32::from_be_bytes(self.be::<4>()?) as usize)
    }

    /// Consume a nil if the next value is one.
    #[inline]
    pub fn try_nil(&mut self) -> MpResult<bool> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// An array header; the length is checked against the bytes that remain.
    #[inline]
    pub fn read_array_len(&mut self) -> MpResult<usize> {
        let start = self.pos;
        let n = match self.byte()? {
            m @ 0x90..=0x9f => (m & 0x0f) as usize,
            0xdc => self.len16()?,
            0xdd => self.len32()?,
            _ => {
                self.pos = start;
                return self.err("expected an array");
            }
        };
        if n > self.remaining() {
            return self.err("array length exceeds the bytes left");
        }
        Ok(n)
    }

    /// A map header (number of key/value pairs); checked against the bytes that remain.
    #[inline]
    pub fn read_map_len(&mut self) -> MpResult<usize> {
        let start = self.pos;
        let n = match self.byte()? {
            m @ 0x80..=0x8f => (m & 0x0f) as usize,
            0xde => self.len16()?,
            0xdf => self.len32()?,
            _ => {
                self.pos = start;
                return self.err("expected a map");
            }
        };
        if n.saturating_mul(2) > self.remaining() {
            return self.err("map length exceeds the bytes left");
        }
        Ok(n)
    }

    /// Any integer encoding.
    #[inline]
    pub fn read_int(&mut self) -> MpResult<Int> {
        let start = self.pos;
        let m = self.byte()?;
        let v = match m {
            0x00..=0x7f => Int::UInt(m as u64),
            0xe0..=0xff => Int::Int(m as i8 as i64),
            0xcc => Int::UInt(self.byte()? as u64),
            0xcd => Int::UInt(u16::from_be_bytes(self.be::<2>()?) as u64),
            0xce => Int::UInt(u32::from_be_bytes(self.be::<4>()?) as u64),
            0xcf => Int::UInt(u64::from_be_bytes(self.be::<8>()?)),
            0xd0 => signed(self.byte()? as i8 as i64),
            0xd1 => signed(i16::from_be_bytes(self.be::<2>()?) as i64),
            0xd2 => signed(i32::from_be_bytes(self.be::<4>()?) as i64),
            0xd3 => signed(i64::from_be_bytes(self.be::<8>()?)),
            _ => {
                self.pos = start;
                return self.err("expected an integer");
            }
        };
        Ok(v)
    }

    /// A non-negative integer that fits in `u32` (token ids, block sizes).
    #[inline(always)]
    pub fn read_u32(&mut self) -> MpResult<u32> {
        let b = &self.buf[self.pos..];
        match *b {
            [m, ..] if m <= 0x7f => {
                self.pos += 1;
                Ok(m as u32)
            }
            [0xcd, x, y, ..] => {
                self.pos += 3;
                Ok(u16::from_be_bytes([x, y]) as u32)
            }
            [0xce, a, b1, c, d, ..] => {
                self.pos += 5;
                Ok(u32::from_be_bytes([a, b1, c, d]))
            }
            [0xcc, x, ..] => {
                self.pos += 2;
                Ok(x as u32)
            }
            _ => self.read_u32_slow(),
        }
    }

    /// `n` values read as [`Reader::read_u32`] would (the caller checked `n` against the bytes
    /// left). Token ids are most of a batch's bytes, and their width varies at random (uint16 or
    /// uint32 for a 128k vocabulary): while 8 bytes remain, each value's length comes from its
    /// marker by arithmetic and its bits from one big-endian 8-byte load, with no branch on the
    /// width; other forms go through `read_u32`.
    pub fn read_u32s(&mut self, n: usize) -> MpResult<Vec<u32>> {
        let mut out = Vec::with_capacity(n);
        let buf = self.buf;
        let mut pos = self.pos;
        while out.len() < n && pos + 8 <= buf.len() {
            let m = buf[pos];
            // positive fixint: 1 byte; 0xcc, 0xcd, 0xce (uint8/16/32): 2, 3, 5 bytes.
            let fix = m < 0x80;
            if !fix && !(0xcc..=0xce).contains(&m) {
                break;
            }
            let mut word = [0u8; 8];
            word.copy_from_slice(&buf[pos..pos + 8]);
            let w = u64::from_be_bytes(word);
            let bytes = if fix { 0 } else { 1u32 << (m - 0xcc) };
            let v = if fix {
                m as u32
            } else {
                // The value's `bytes` bytes follow the marker (top byte of `w`).
                ((w << 8) >> (64 - 8 * bytes)) as u32
            };
            out.push(v);
            pos += 1 + bytes as usize;
        }
        self.pos = pos;
        while out.len() < n {
            out.push(self.read_u32()?);
        }
        Ok(out)
    }

    #[cold]
    fn read_u32_slow(&mut self) -> MpResult<u32> {
        let start = self.pos;
        match self.read_int()? {
            Int::UInt(v) if v <= u32::MAX as u64 => Ok(v as u32),
            _ => {
                self.pos = start;
                self.err("integer out of range for u32")
            }
        }
    }

    /// Fast path for a non-negative integer of any width; `None` (nothing consumed) when the
    /// next value is not a complete unsigned-integer encoding.
    #[inline(always)]
    pub fn try_read_uint(&mut self) -> Option<u64> {
        let b = &self.buf[self.pos..];
        let (v, n) = match *b {
            [0xcf, a, b1, c, d, e, f, g, h, ..] => {
                (u64::from_be_bytes([a, b1, c, d, e, f, g, h]), 9)
            }
            [m, ..] if m <= 0x7f => (m as u64, 1),
            [0xce, a, b1, c, d, ..] => (u32::from_be_bytes([a, b1, c, d]) as u64, 5),
            [0xcd, x, y, ..] => (u16::from_be_bytes([x, y]) as u64, 3),
            [0xcc, x, ..] => (x as u64, 2),
            _ => return None,
        };
        self.pos += n;
        Some(v)
    }

    /// An integer that fits in `i64`.
    #[inline]
    pub fn read_i64(&mut self) -> MpResult<i64> {
        let start = self.pos;
        match self.read_int()? {
            Int::Int(v) => Ok(v),
            Int::UInt(v) if v <= i64::MAX as u64 => Ok(v as i64),
            Int::UInt(_) => {
                self.pos = start;
                self.err("integer out of range for i64")
            }
        }
    }

    /// A float (float32 or float64); integers are accepted and converted.
    #[inline]
    pub fn read_f64(&mut self) -> MpResult<f64> {
        match self.peek()? {
            0xcb => {
                self.pos += 1;
                Ok(f64::from_be_bytes(self.be::<8>()?))
            }
            0xca => {
                self.pos += 1;
                Ok(f32::from_be_bytes(self.be::<4>()?) as f64)
            }
            _ => match self.read_int() {
                Ok(Int::UInt(v)) => Ok(v as f64),
                Ok(Int::Int(v)) => Ok(v as f64),
                Err(_) => self.err("expected a number"),
            },
        }
    }

    /// Raw bytes of a str value (not yet UTF-8 checked).
    #[inline]
    pub fn read_str_bytes(&mut self) -> MpResult<&'a [u8]> {
        let start = self.pos;
        let n = match self.byte()? {
            m @ 0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => self.len8()?,
            0xda => self.len16()?,
            0xdb => self.len32()?,
            _ => {
                self.pos = start;
                return self.err("expected a string");
            }
        };
        self.take(n)
    }

    /// A UTF-8 string.
    #[inline]
    pub fn read_str(&mut self) -> MpResult<&'a str> {
        let start = self.pos;
        let b = self.read_str_bytes()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s),
            Err(_) => {
                self.pos = start;
                self.err("invalid UTF-8 in string")
            }
        }
    }

    /// A bin value.
    #[inline]
    pub fn read_bin(&mut self) -> MpResult<&'a [u8]> {
        let start = self.pos;
        let n = match self.byte()? {
            0xc4 => self.len8()?,
            0xc5 => self.len16()?,
            0xc6 => self.len32()?,
            _ => {
                self.pos = start;
                return self.err("expected bytes");
            }
        };
        self.take(n)
    }

    /// Skip one complete value of any type, however nested (iterative: no recursion).
    pub fn skip_value(&mut self) -> MpResult<()> {
        let mut pending: usize = 1;
        while pending > 0 {
            pending -= 1;
            let m = self.byte()?;
            let skip = match m {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                0x80..=0x8f => {
                    pending = self.add_children(pending, 2 * (m & 0x0f) as usize)?;
                    0
                }
                0x90..=0x9f => {
                    pending = self.add_children(pending, (m & 0x0f) as usize)?;
                    0
                }
                0xa0..=0xbf => (m & 0x1f) as usize,
                0xc1 => return self.err("reserved marker 0xc1"),
                0xc4 | 0xd9 => self.len8()?,
                0xc5 | 0xda => self.len16()?,
                0xc6 | 0xdb => self.len32()?,
                0xc7 => self.len8()? + 1,
                0xc8 => self.len16()? + 1,
                0xc9 => self.len32()?.saturating_add(1),
                0xca => 4,
                0xcb => 8,
                0xcc | 0xd0 => 1,
                0xcd | 0xd1 => 2,
                0xce | 0xd2 => 4,
                0xcf | 0xd3 => 8,
                0xd4 => 2,
                0xd5 => 3,
                0xd6 => 5,
                0xd7 => 9,
                0xd8 => 17,
                0xdc => {
                    let n = self.len16()?;
                    pending = self.add_children(pending, n)?;
                    0
                }
                0xdd => {
                    let n = self.len32()?;
                    pending = self.add_children(pending, n)?;
                    0
                }
                0xde => {
                    let n = self.len16()?;
                    pending = self.add_children(pending, 2 * n)?;
                    0
                }
                0xdf => {
                    let n = self.len32()?;
                    pending = self.add_children(pending, n.saturating_mul(2))?;
                    0
                }
            };
            self.take(skip)?;
        }
        Ok(())
    }

    #[inline]
    fn add_children(&self, pending: usize, n: usize) -> MpResult<usize> {
        let total = pending.saturating_add(n);
        if total > self.remaining() {
            return self.err("container length exceeds the bytes left");
        }
        Ok(total)
    }

    /// One complete value as a generic [`Value`] (nesting limited to [`MAX_DEPTH`]).
    pub fn read_value(&mut self) -> MpResult<Value> {
        self.read_value_at(0)
    }

    fn read_value_at(&mut self, depth: usize) -> MpResult<Value> {
        if depth >= MAX_DEPTH {
            return self.err("value nested too deeply");
        }
        let m = self.peek()?;
        Ok(match kind_of(m) {
            Kind::Nil => {
                self.pos += 1;
                Value::Nil
            }
            Kind::Bool => {
                self.pos += 1;
                Value::Bool(m == 0xc3)
            }
            Kind::Int => match self.read_int()? {
                Int::UInt(v) => Value::UInt(v),
                Int::Int(v) => Value::Int(v),
            },
            Kind::Float => {
                self.pos += 1;
                if m == 0xca {
                    Value::F32(f32::from_be_bytes(self.be::<4>()?))
                } else {
                    Value::F64(f64::from_be_bytes(self.be::<8>()?))
                }
            }
            Kind::Str => Value::Str(self.read_str()?.to_owned()),
            Kind::Bin => Value::Bin(self.read_bin()?.to_vec()),
            Kind::Array => {
                let n = self.read_array_len()?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.read_value_at(depth + 1)?);
                }
                Value::Array(v)
            }
            Kind::Map => {
                let n = self.read_map_len()?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = self.read_value_at(depth + 1)?;
                    let x = self.read_value_at(depth + 1)?;
                    v.push((k, x));
                }
                Value::Map(v)
            }
            Kind::Ext => {
                self.pos += 1;
                let n = match m {
                    0xd4 => 1,
                    0xd5 => 2,
                    0xd6 => 4,
                    0xd7 => 8,
                    0xd8 => 16,
                    0xc7 => self.len8()?,
                    0xc8 => self.len16()?,
                    _ => self.len32()?,
                };
                let t = self.byte()? as i8;
                Value::Ext(t, self.take(n)?.to_vec())
            }
            Kind::Reserved => return self.err("reserved marker 0xc1"),
        })
    }
}

#[inline]
fn signed(v: i64) -> Int {
    if v >= 0 {
        Int::UInt(v as u64)
    } else {
        Int::Int(v)
    }
}

/// MessagePack writer (smallest encodings, as msgspec writes them).
#[derive(Debug, Default, Clone)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Writer { buf: Vec::new() }
    }

    pub fn with_capacity(n: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(n),
        }
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    #[inline]
    pub fn nil(&mut self) {
        self.buf.push(0xc0);
    }

    #[inline]
    pub fn bool(&mut self, v: bool) {
        self.buf.push(if v { 0xc3 } else { 0xc2 });
    }

    #[inline]
    pub fn uint(&mut self, v: u64) {
        if v <= 0x7f {
            self.buf.push(v as u8);
        } else if v <= u8::MAX as u64 {
            self.buf.extend_from_slice(&[0xcc, v as u8]);
        } else if v <= u16::MAX as u64 {
            self.buf.push(0xcd);
            self.buf.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v <= u32::MAX as u64 {
            self.buf.push(0xce);
            self.buf.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            self.buf.push(0xcf);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    #[inline]
    pub fn int(&mut self, v: i64) {
        if v >= 0 {
            self.uint(v as u64);
        } else if v >= -32 {
            self.buf.push(v as i8 as u8);
        } else if v >= i8::MIN as i64 {
            self.buf.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= i16::MIN as i64 {
            self.buf.push(0xd1);
            self.buf.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= i32::MIN as i64 {
            self.buf.push(0xd2);
            self.buf.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            self.buf.push(0xd3);
            self.buf.extend_from_slice(&v.to_be_bytes());
        }
    }

    #[inline]
    pub fn f64(&mut self, v: f64) {
        self.buf.push(0xcb);
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    #[inline]
    pub fn f32(&mut self, v: f32) {
        self.buf.push(0xca);
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    #[inline]
    pub fn str(&mut self, s: &str) {
        let n = s.len();
        if n <= 31 {
            self.buf.push(0xa0 | n as u8);
        } else if n <= u8::MAX as usize {
            self.buf.extend_from_slice(&[0xd9, n as u8]);
        } else if n <= u16::MAX as usize {
            self.buf.push(0xda);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.buf.push(0xdb);
            self.buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
        self.buf.extend_from_slice(s.as_bytes());
    }

    #[inline]
    pub fn bin(&mut self, b: &[u8]) {
        let n = b.len();
        if n <= u8::MAX as usize {
            self.buf.extend_from_slice(&[0xc4, n as u8]);
        } else if n <= u16::MAX as usize {
            self.buf.push(0xc5);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.buf.push(0xc6);
            self.buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
        self.buf.extend_from_slice(b);
    }

    #[inline]
    pub fn array_len(&mut self, n: usize) {
        if n <= 15 {
            self.buf.push(0x90 | n as u8);
        } else if n <= u16::MAX as usize {
            self.buf.push(0xdc);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.buf.push(0xdd);
            self.buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    #[inline]
    pub fn map_len(&mut self, n: usize) {
        if n <= 15 {
            self.buf.push(0x80 | n as u8);
        } else if n <= u16::MAX as usize {
            self.buf.push(0xde);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.buf.push(0xdf);
            self.buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    /// A map header whose width is chosen by `max_entries` rather than by `n`: msgspec sizes a
    /// struct's map header for every field it could write (fields + tag) and then fills in how
    /// many it did write, so a struct with 16+ possible entries always gets a map16 header.
    #[inline]
    pub fn map_header_sized_for(&mut self, n: usize, max_entries: usize) {
        let n = n.min(max_entries);
        if max_entries <= 15 {
            self.buf.push(0x80 | n as u8);
        } else if max_entries <= u16::MAX as usize {
            self.buf.push(0xde);
            self.buf.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.buf.push(0xdf);
            self.buf.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }

    pub fn ext(&mut self, t: i8, data: &[u8]) {
        let n = data.len();
        match n {
            1 => self.buf.push(0xd4),
            2 => self.buf.push(0xd5),
            4 => self.buf.push(0xd6),
            8 => self.buf.push(0xd7),
            16 => self.buf.push(0xd8),
            _ if n <= u8::MAX as usize => self.buf.extend_from_slice(&[0xc7, n as u8]),
            _ if n <= u16::MAX as usize => {
                self.buf.push(0xc8);
                self.buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                self.buf.push(0xc9);
                self.buf.extend_from_slice(&(n as u32).to_be_bytes());
            }
        }
        self.buf.push(t as u8);
        self.buf.extend_from_slice(data);
    }

    pub fn value(&mut self, v: &Value) {
        match v {
            Value::Nil => self.nil(),
            Value::Bool(b) => self.bool(*b),
            Value::UInt(x) => self.uint(*x),
            Value::Int(x) => self.int(*x),
            Value::F32(x) => self.f32(*x),
            Value::F64(x) => self.f64(*x),
            Value::Str(s) => self.str(s),
            Value::Bin(b) => self.bin(b),
            Value::Array(a) => {
                self.array_len(a.len());
                for x in a {
                    self.value(x);
                }
            }
            Value::Map(m) => {
                self.map_len(m.len());
                for (k, x) in m {
                    self.value(k);
                    self.value(x);
                }
            }
            Value::Ext(t, d) => self.ext(*t, d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(v: &Value) -> Vec<u8> {
        let mut w = Writer::new();
        w.value(v);
        let bytes = w.into_inner();
        let mut r = Reader::new(&bytes);
        assert_eq!(&r.read_value().unwrap(), v);
        assert!(r.is_empty());
        let mut r = Reader::new(&bytes);
        r.skip_value().unwrap();
        assert!(r.is_empty());
        bytes
    }

    #[test]
    fn int_encodings_are_smallest() {
        let cases: &[(i128, &str)] = &[
            (0, "00"),
            (127, "7f"),
            (128, "cc80"),
            (255, "ccff"),
            (256, "cd0100"),
            (65536, "ce00010000"),
            (1 << 32, "cf0000000100000000"),
            (u64::MAX as i128, "cfffffffffffffffff"),
            (-1, "ff"),
            (-32, "e0"),
            (-33, "d0df"),
            (-128, "d080"),
            (-129, "d1ff7f"),
            (-32769, "d2ffff7fff"),
            (i64::MIN as i128, "d38000000000000000"),
        ];
        for &(v, hex) in cases {
            let val = if v >= 0 {
                Value::UInt(v as u64)
            } else {
                Value::Int(v as i64)
            };
            let b = roundtrip(&val);
            let got: String = b.iter().map(|x| format!("{x:02x}")).collect();
            assert_eq!(got, hex, "{v}");
        }
    }

    #[test]
    fn signed_markers_holding_non_negative_values_read_as_uint() {
        let mut r = Reader::new(&[0xd0, 0x05, 0xd3, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(r.read_int().unwrap(), Int::UInt(5));
        assert_eq!(r.read_int().unwrap(), Int::UInt(9));
    }

    #[test]
    fn containers_and_strings() {
        let long = "x".repeat(300);
        roundtrip(&Value::Array(vec![
            Value::Str("a".into()),
            Value::Str("y".repeat(40)),
            Value::Str(long),
            Value::Bin(vec![1, 2, 3]),
            Value::Bin(vec![7; 300]),
            Value::Nil,
            Value::Bool(true),
            Value::F64(1.5),
            Value::F32(2.5),
            Value::Map(vec![(Value::Str("k".into()), Value::UInt(1))]),
            Value::Array((0..20).map(Value::UInt).collect()),
            Value::Ext(3, vec![1, 2, 3, 4]),
            Value::Ext(-2, vec![5; 3]),
        ]));
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        // array32 claiming 4 billion elements in 5 bytes
        let mut r = Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.read_array_len().is_err());
        let mut r = Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.read_value().is_err());
        let mut r = Reader::new(&[0xdf, 0xff, 0xff, 0xff, 0xff, 0]);
        assert!(r.skip_value().is_err());
        let mut r = Reader::new(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0]);
        assert!(r.read_bin().is_err());
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut deep = vec![0x91u8; 100_000];
        deep.push(0xc0);
        let mut r = Reader::new(&deep);
        assert_eq!(
            r.read_value().unwrap_err().reason,
            "value nested too deeply"
        );
        let mut r = Reader::new(&deep);
        r.skip_value().unwrap();
        assert!(r.is_empty());
    }

    #[test]
    fn read_u32s_reads_as_read_u32() {
        // Every width, at every distance from the end, then forms only the slow path reads.
        let values = [
            0u64,
            5,
            0x7f,
            0x80,
            0xff,
            0x100,
            0xffff,
            0x1_0000,
            0x1f3f8,
            0xffff_ffff,
        ];
        let mut w = Writer::new();
        for i in 0..40 {
            w.uint(values[(i * 7) % values.len()]);
        }
        let mut bytes = w.into_inner();
        bytes.extend([0xcf, 0, 0, 0, 0, 0, 0, 0, 9, 0xd0, 5, 0x2a, 0xcd, 1, 2]);
        for skip in 0..45 {
            for n in 0..(45 - skip) {
                let mut a = Reader::new(&bytes);
                let mut b = Reader::new(&bytes);
                for _ in 0..skip {
                    a.read_u32().unwrap();
                    b.read_u32().unwrap();
                }
                let want: Vec<u32> = (0..n).map(|_| a.read_u32().unwrap()).collect();
                assert_eq!(b.read_u32s(n).unwrap(), want);
                assert_eq!(b.pos(), a.pos());
            }
        }
        // Out of range or negative: the same error at the same offset.
        for bad in [
            &[0x01, 0xcf, 1, 0, 0, 0, 0, 0, 0, 0][..],
            &[0x01, 0xff, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let mut a = Reader::new(bad);
            a.read_u32().unwrap();
            let want = a.read_u32().unwrap_err();
            assert_eq!(Reader::new(bad).read_u32s(2).unwrap_err(), want);
        }
    }

    #[test]
    fn type_errors_do_not_consume() {
        let mut r = Reader::new(&[0xa1, b'x']);
        assert!(r.read_int().is_err());
        assert_eq!(r.pos(), 0);
        assert_eq!(r.read_str().unwrap(), "x");
        let mut r = Reader::new(&[0xa1, 0xff]);
        assert!(r.read_str().is_err());
        let mut r = Reader::new(&[0xc1]);
        assert!(r.skip_value().is_err());
    }
}
