//! A pickle reader for what `torch.save` writes for one tensor (`data.pkl`): a tiny stack machine
//! over the opcodes of pickle protocols 2-5 that PyTorch's pickler emits, which only *builds
//! values* — globals are names, never imported or called. Then [`tensor_of`] recognizes
//! `torch._utils._rebuild_tensor_v2(persistent_id('storage', <dtype>Storage, key, location,
//! numel), offset, size, stride, requires_grad, OrderedDict())` and nothing else.

/// A pickled value (only the shapes torch uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict,
    /// `module.name`.
    Global(String),
    /// `BINPERSID` of a value.
    Persistent(Box<Value>),
    /// `callable(args)`.
    Reduce(Box<Value>, Box<Value>),
    Mark,
}

/// Bounds: the pickle of one tensor is ~160 bytes.
const MAX_STACK: usize = 256;
const MAX_MEMO: usize = 256;

pub fn load(p: &[u8]) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: Vec<Option<Value>> = Vec::new();
    let mut i = 0;
    let take = |i: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = p.get(*i..*i + n).ok_or("truncated pickle")?;
        *i += n;
        Ok(s)
    };
    fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>, String> {
        let at = stack
            .iter()
            .rposition(|v| *v == Value::Mark)
            .ok_or("pickle: no MARK")?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    }
    fn pop(stack: &mut Vec<Value>) -> Result<Value, String> {
        stack
            .pop()
            .ok_or_else(|| "pickle: stack underflow".to_string())
    }
    loop {
        if stack.len() > MAX_STACK {
            return Err("pickle: stack too deep".into());
        }
        let op = *p.get(i).ok_or("truncated pickle")?;
        i += 1;
        match op {
            0x80 => {
                take(&mut i, 1)?;
            } // PROTO
            0x95 => {
                take(&mut i, 8)?;
            } // FRAME
            b'.' => return pop(&mut stack), // STOP
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b')' => stack.push(Value::Tuple(vec![])),
            b']' => stack.push(Value::List(vec![])),
            b'}' => stack.push(Value::Dict),
            b'K' => stack.push(Value::Int(take(&mut i, 1)?[0] as i64)),
            b'M' => {
                let b = take(&mut i, 2)?;
                stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
            }
            b'J' => {
                let b = take(&mut i, 4)?;
                stack.push(Value::Int(i32::from_le_bytes(b.try_into().unwrap()) as i64))
            }
            0x8a => {
                // LONG1: little-endian two's complement of n ≤ 8 bytes.
                let n = take(&mut i, 1)?[0] as usize;
                if n > 8 {
                    return Err("pickle: integer too large".into());
                }
                let b = take(&mut i, n)?;
                let mut v: i64 = 0;
                for (k, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * k);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'X' | 0x8c => {
                let n = if op == b'X' {
                    u32::from_le_bytes(take(&mut i, 4)?.try_into().unwrap()) as usize
                } else {
                    take(&mut i, 1)?[0] as usize
                };
                let s = std::str::from_utf8(take(&mut i, n)?).map_err(|_| "pickle: bad utf-8")?;
                stack.push(Value::Str(s.to_owned()));
            }
            b'c' => {
                // GLOBAL "module\nname\n"
                let mut parts = [String::new(), String::new()];
                for part in &mut parts {
                    let end = p[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .ok_or("truncated pickle")?;
                    *part = String::from_utf8_lossy(&p[i..i + end]).into_owned();
                    i += end + 1;
                }
                stack.push(Value::Global(format!("{}.{}", parts[0], parts[1])));
            }
            0x93 => {
                // STACK_GLOBAL
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(format!("{m}.{n}"))),
                    _ => return Err("pickle: bad STACK_GLOBAL".into()),
                }
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("pickle: stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'e' => {
                // APPENDS
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err("pickle: APPENDS without a list".into()),
                }
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err("pickle: APPEND without a list".into()),
                }
            }
            b'u' => {
                // SETITEMS: keys and values dropped (torch's dicts here are empty metadata).
                pop_mark(&mut stack)?;
                if !matches!(stack.last(), Some(Value::Dict)) {
                    return Err("pickle: SETITEMS without a dict".into());
                }
            }
            b's' => {
                pop(&mut stack)?;
                pop(&mut stack)?;
                if !matches!(stack.last(), Some(Value::Dict)) {
                    return Err("pickle: SETITEM without a dict".into());
                }
            }
            b'Q' => {
                let v = pop(&mut stack)?;
                stack.push(Value::Persistent(Box::new(v)));
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                stack.push(Value::Reduce(Box::new(f), Box::new(args)));
            }
            b'q' | b'r' | 0x94 => {
                let idx = match op {
                    b'q' => take(&mut i, 1)?[0] as usize,
                    b'r' => u32::from_le_bytes(take(&mut i, 4)?.try_into().unwrap()) as usize,
                    _ => memo.len(),
                };
                if idx >= MAX_MEMO {
                    return Err("pickle: memo too large".into());
                }
                if memo.len() <= idx {
                    memo.resize(idx + 1, None);
                }
                memo[idx] = Some(stack.last().ok_or("pickle: stack underflow")?.clone());
            }
            b'h' | b'j' => {
                let idx = if op == b'h' {
                    take(&mut i, 1)?[0] as usize
                } else {
                    u32::from_le_bytes(take(&mut i, 4)?.try_into().unwrap()) as usize
                };
                let v = memo
                    .get(idx)
                    .cloned()
                    .flatten()
                    .ok_or("pickle: bad memo reference")?;
                stack.push(v);
            }
            _ => {
                return Err(format!(
                    "pickle opcode 0x{op:02x} not allowed in a tensor file"
                ))
            }
        }
    }
}

/// What `_rebuild_tensor_v2` would build, before the storage is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// `torch.FloatStorage` → `Float`, ...
    pub storage_type: String,
    /// The storage's member name under `data/`.
    pub key: String,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

fn ints(v: &Value, what: &str) -> Result<Vec<usize>, String> {
    match v {
        Value::Tuple(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(n) if *n >= 0 => Ok(*n as usize),
                _ => Err(format!("tensor {what} is not a tuple of sizes")),
            })
            .collect(),
        _ => Err(format!("tensor {what} is not a tuple")),
    }
}

/// The tensor a `data.pkl` describes; an error naming what it is otherwise.
pub fn tensor_of(v: &Value) -> Result<TensorRef, String> {
    const NOT: &str = "payload did not deserialize to a torch.Tensor";
    let Value::Reduce(f, args) = v else {
        return Err(NOT.into());
    };
    match &**f {
        Value::Global(g) if g == "torch._utils._rebuild_tensor_v2" => {}
        Value::Global(g) if g.starts_with("torch._utils._rebuild_sparse") => {
            return Err("sparse tensors are not supported here: send a dense tensor".into())
        }
        Value::Global(g) if g.starts_with("torch._utils.") => {
            return Err(format!(
                "unsupported tensor kind ({g}): send a plain dense tensor"
            ))
        }
        _ => return Err(NOT.into()),
    }
    let Value::Tuple(a) = &**args else {
        return Err(NOT.into());
    };
    let [Value::Persistent(pid), Value::Int(offset), size, stride, ..] = a.as_slice() else {
        return Err(NOT.into());
    };
    let Value::Tuple(pid) = &**pid else {
        return Err(NOT.into());
    };
    let [Value::Str(kind), Value::Global(storage), Value::Str(key), ..] = pid.as_slice() else {
        return Err(NOT.into());
    };
    if kind != "storage" {
        return Err(NOT.into());
    }
    let storage_type = storage
        .strip_prefix("torch.")
        .and_then(|s| s.strip_suffix("Storage"))
        .ok_or(NOT)?
        .to_owned();
    let size = ints(size, "size")?;
    let stride = ints(stride, "stride")?;
    if size.len() != stride.len() || *offset < 0 {
        return Err("tensor size and stride disagree".into());
    }
    Ok(TensorRef {
        storage_type,
        key: key.clone(),
        offset: *offset as usize,
        size,
        stride,
    })
}
