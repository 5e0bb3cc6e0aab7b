//! The `args` of a training checkpoint: SiT's and VisionLLaMA's `train.py` save
//! `{"model": ..., "ema": ..., "opt": ..., "args": args}`, where `args` is the run's
//! `argparse.Namespace`, pickled in the archive's `data.pkl` as a class with a state dict.
//! Its keys and values are often memo references (BINGET) to strings pickled earlier in the
//! stream, so one pass runs a small pickle machine over every opcode: its stack and memo hold
//! scalars, dicts of scalars and class names, and everything else as an opaque value. Nothing
//! is executed: the classes are only names.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};

/// A scalar of the Namespace (lists and other objects are left out).
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    None,
}

/// A value on the pickle machine's stack, as far as this reader tells values apart.
#[derive(Clone, Debug)]
enum Value {
    Scalar(Arg),
    /// A class named by GLOBAL; `true` for `argparse.Namespace`.
    Class(bool),
    Namespace,
    /// A dict's string-keyed scalar entries (others are dropped).
    Dict(BTreeMap<String, Arg>),
    Other,
    Mark,
}

/// The scalar entries of the first `argparse.Namespace` of a pickle stream (its BUILD
/// state), or `None` when it has none. Errors on a stream it cannot step through.
pub fn namespace_args(pickle: &[u8]) -> Result<Option<BTreeMap<String, Arg>>> {
    let mut r = Reader { bytes: pickle, pos: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u64, Value> = HashMap::new();
    loop {
        let op = r.take(1)?[0];
        match op {
            b'.' => return Ok(None),
            b'X' => stack.push(Value::Scalar(Arg::Str(r.text(4)?))),
            0x8c => stack.push(Value::Scalar(Arg::Str(r.text(1)?))),
            0x8d => stack.push(Value::Scalar(Arg::Str(r.text(8)?))),
            b'J' => stack.push(Value::Scalar(Arg::Int(i32::from_le_bytes(r.take(4)?.try_into()?) as i64))),
            b'K' => stack.push(Value::Scalar(Arg::Int(r.take(1)?[0] as i64))),
            b'M' => stack.push(Value::Scalar(Arg::Int(u16::from_le_bytes(r.take(2)?.try_into()?) as i64))),
            0x8a => {
                let n = r.take(1)?[0] as usize;
                let b = r.take(n)?;
                stack.push(if n <= 8 {
                    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 };
                    let mut v = [fill; 8];
                    v[..n].copy_from_slice(b);
                    Value::Scalar(Arg::Int(i64::from_le_bytes(v)))
                } else {
                    Value::Other
                });
            }
            b'G' => stack.push(Value::Scalar(Arg::Float(f64::from_be_bytes(r.take(8)?.try_into()?)))),
            b'N' => stack.push(Value::Scalar(Arg::None)),
            0x88 => stack.push(Value::Scalar(Arg::Bool(true))),
            0x89 => stack.push(Value::Scalar(Arg::Bool(false))),
            b'c' => {
                let (module, name) = (r.line()?, r.line()?);
                stack.push(Value::Class(module == "argparse" && name == "Namespace"));
            }
            0x93 => {
                let (name, module) = (pop(&mut stack)?, pop(&mut stack)?);
                let is = |v: &Value, s: &str| matches!(v, Value::Scalar(Arg::Str(x)) if x == s);
                stack.push(Value::Class(is(&module, "argparse") && is(&name, "Namespace")));
            }
            // The memo.
            b'q' | b'r' | 0x94 => {
                let i = match op {
                    b'q' => r.index(1)?,
                    b'r' => r.index(4)?,
                    _ => memo.len() as u64,
                };
                let top = stack.last().cloned().unwrap_or(Value::Other);
                memo.insert(i, if matches!(top, Value::Dict(_)) { Value::Other } else { top });
            }
            b'h' | b'j' => {
                let i = r.index(if op == b'h' { 1 } else { 4 })?;
                stack.push(memo.get(&i).cloned().unwrap_or(Value::Other));
            }
            // Containers and objects.
            b'(' => stack.push(Value::Mark),
            b'}' => stack.push(Value::Dict(BTreeMap::new())),
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let mut dict = Value::Dict(BTreeMap::new());
                insert(&mut dict, items);
                stack.push(dict);
            }
            b's' => {
                let (v, k) = (pop(&mut stack)?, pop(&mut stack)?);
                insert(top(&mut stack)?, vec![k, v]);
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                insert(top(&mut stack)?, items);
            }
            0x81 | b'R' => {
                let (_args, class) = (pop(&mut stack)?, pop(&mut stack)?);
                stack.push(if matches!(class, Value::Class(true)) { Value::Namespace } else { Value::Other });
            }
            b'b' => {
                let state = pop(&mut stack)?;
                if let (Value::Namespace, Value::Dict(args)) = (top(&mut stack)?, state) {
                    return Ok(Some(args));
                }
            }
            // The rest only move values the Namespace does not hold.
            _ => {
                r.skip_argument(op)?;
                let Some((pops, pushes)) = stack_effect(op) else {
                    bail!("unknown pickle opcode 0x{op:02x} at byte {}", r.pos - 1)
                };
                match pops {
                    Pops::N(n) => drop(stack.drain(stack.len().saturating_sub(n)..)),
                    Pops::ToMark => drop(pop_mark(&mut stack)?),
                }
                stack.extend(std::iter::repeat_n(Value::Other, pushes));
            }
        }
    }
}

fn pop(stack: &mut Vec<Value>) -> Result<Value> {
    stack.pop().ok_or_else(|| anyhow::anyhow!("the pickle pops an empty stack"))
}

fn top(stack: &mut [Value]) -> Result<&mut Value> {
    stack.last_mut().ok_or_else(|| anyhow::anyhow!("the pickle reads an empty stack"))
}

/// The values above the topmost MARK, which goes too.
fn pop_mark(stack: &mut Vec<Value>) -> Result<Vec<Value>> {
    let Some(mark) = stack.iter().rposition(|v| matches!(v, Value::Mark)) else {
        bail!("the pickle has no MARK to pop to")
    };
    let items = stack.split_off(mark + 1);
    stack.pop();
    Ok(items)
}

/// Key-value pairs into a dict (string keys and scalar values only).
fn insert(dict: &mut Value, items: Vec<Value>) {
    if let Value::Dict(map) = dict {
        let mut items = items.into_iter();
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            if let (Value::Scalar(Arg::Str(k)), Value::Scalar(v)) = (k, v) {
                map.insert(k, v);
            }
        }
    }
}

/// What an opcode takes off the stack.
enum Pops {
    N(usize),
    ToMark,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else { bail!("the pickle ends inside an opcode's argument at byte {}", self.pos) };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A little-endian length of `width` bytes.
    fn index(&mut self, width: usize) -> Result<u64> {
        let mut v = [0u8; 8];
        v[..width].copy_from_slice(self.take(width)?);
        Ok(u64::from_le_bytes(v))
    }

    /// A string of the length its `width`-byte prefix gives.
    fn text(&mut self, width: usize) -> Result<String> {
        let n = self.index(width)? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn line(&mut self) -> Result<String> {
        let Some(n) = self.bytes[self.pos..].iter().position(|&b| b == b'\n') else {
            bail!("the pickle ends inside a text argument at byte {}", self.pos)
        };
        let s = String::from_utf8_lossy(&self.bytes[self.pos..self.pos + n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }

    /// Steps over the argument of opcode `op` (pickle protocols 0 to 5).
    fn skip_argument(&mut self, op: u8) -> Result<()> {
        match op {
            0x80 | 0x82 => drop(self.take(1)?),
            0x83 => drop(self.take(2)?),
            0x84 => drop(self.take(4)?),
            0x95 => drop(self.take(8)?),
            b'U' | b'C' => drop(self.text(1)?),
            b'T' | b'B' | 0x8b => drop(self.text(4)?),
            0x8e | 0x96 => drop(self.text(8)?),
            b'I' | b'L' | b'S' | b'V' | b'F' | b'g' | b'P' | b'p' => drop(self.line()?),
            b'i' => drop((self.line()?, self.line()?)),
            _ => {}
        }
        Ok(())
    }
}

/// What an opcode the machine does not model takes off the stack and how many opaque values
/// it leaves; `None` for an opcode pickle does not have.
fn stack_effect(op: u8) -> Option<(Pops, usize)> {
    use Pops::{N, ToMark};
    Some(match op {
        0x80 | 0x95 | b'p' => (N(0), 0),
        b'0' | b'a' => (N(1), 0),
        b'1' | b'e' | 0x90 => (ToMark, 0),
        b'2' => (N(1), 2),
        // Empty containers, extension codes, buffers.
        b')' | b']' | 0x8f | 0x97 | 0x82 | 0x83 | 0x84 => (N(0), 1),
        // Bytes, old-style strings and numbers, GET and PERSID of protocol 0.
        b'U' | b'C' | b'T' | b'B' | 0x8b | 0x8e | 0x96 | b'I' | b'L' | b'S' | b'V' | b'F' | b'g' | b'P' => (N(0), 1),
        b't' | b'l' | 0x91 | b'o' | b'i' => (ToMark, 1),
        0x85 | b'Q' | 0x98 => (N(1), 1),
        0x86 => (N(2), 1),
        0x87 | 0x92 => (N(3), 1),
        _ => return None,
    })
}
