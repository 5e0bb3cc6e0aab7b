//! PyTorch `.pt` files as `torch.save(state_dict)` writes them, for the reference code's
//! `load_state_dict(strict=True)`: a zip archive (entries stored, data 64-byte aligned) of
//! `archive/data.pkl`, a protocol-2 pickle of an `OrderedDict` whose values are
//! `torch._utils._rebuild_tensor_v2` of persistent `FloatStorage`s, `archive/data/K` (storage
//! K's little-endian f32 bytes), `archive/version` and `archive/byteorder`. Every global it
//! names is on `torch.load(weights_only=True)`'s allow list.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use crate::model::StateDict;

/// Writes `tensors` (f32) as a PyTorch state dict at `path` (atomically).
pub fn write_pt(path: &Path, tensors: &StateDict) -> Result<()> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
    let mut pickle = Pickle::default();
    pickle.global("collections", "OrderedDict").op(EMPTY_TUPLE).op(REDUCE).op(MARK);
    for (k, (name, data)) in tensors.iter().enumerate() {
        let values = data.as_slice::<f32>().map_err(|e| anyhow::anyhow!("{name} is not f32: {e:?}"))?;
        let shape: Vec<usize> = data.shape().to_vec();
        // Row-major strides, as a contiguous tensor has.
        let mut strides = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * shape[d + 1];
        }
        pickle.string(name).global("torch._utils", "_rebuild_tensor_v2").op(MARK);
        pickle.op(MARK).string("storage").global("torch", "FloatStorage").string(&k.to_string()).string("cpu");
        pickle.int(values.len()).op(TUPLE).op(BINPERSID);
        pickle.int(0).ints(&shape).ints(&strides).op(NEWFALSE);
        pickle.global("collections", "OrderedDict").op(EMPTY_TUPLE).op(REDUCE).op(TUPLE).op(REDUCE);
        zip.start_file_aligned(format!("archive/data/{k}"), stored, 64)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        zip.write_all(&bytes)?;
    }
    pickle.op(SETITEMS).op(STOP);
    zip.start_file_aligned("archive/data.pkl", stored, 64)?;
    zip.write_all(&pickle.0)?;
    zip.start_file_aligned("archive/byteorder", stored, 64)?;
    zip.write_all(b"little")?;
    zip.start_file_aligned("archive/version", stored, 64)?;
    zip.write_all(b"3\n")?;
    let bytes = zip.finish().context("cannot finish the .pt archive")?.into_inner();
    crate::io::write_atomic(path, &bytes)
}

const PROTO: u8 = 0x80;
const GLOBAL: u8 = b'c';
const MARK: u8 = b'(';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const REDUCE: u8 = b'R';
const BINPERSID: u8 = b'Q';
const BINUNICODE: u8 = b'X';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const NEWFALSE: u8 = 0x89;
const SETITEMS: u8 = b'u';
const STOP: u8 = b'.';

/// A protocol-2 pickle stream, op by op.
struct Pickle(Vec<u8>);

impl Default for Pickle {
    fn default() -> Self {
        Self(vec![PROTO, 2])
    }
}

impl Pickle {
    fn op(&mut self, op: u8) -> &mut Self {
        self.0.push(op);
        self
    }

    /// `module.name`, as `GLOBAL` names it.
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.0.push(GLOBAL);
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self
    }

    fn string(&mut self, s: &str) -> &mut Self {
        self.0.push(BINUNICODE);
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// A non-negative int: 4 bytes when it fits, else 8 (`LONG1`, two's complement).
    fn int(&mut self, v: usize) -> &mut Self {
        match i32::try_from(v) {
            Ok(small) => {
                self.0.push(BININT);
                self.0.extend_from_slice(&small.to_le_bytes());
            }
            Err(_) => {
                self.0.extend_from_slice(&[LONG1, 8]);
                self.0.extend_from_slice(&(v as u64).to_le_bytes());
            }
        }
        self
    }

    /// A tuple of ints.
    fn ints(&mut self, values: &[usize]) -> &mut Self {
        self.op(MARK);
        for &v in values {
            self.int(v);
        }
        self.op(TUPLE)
    }
}
