//! safetensors files read one tensor at a time: the headers once, then each tensor's bytes when it
//! is asked for, so a pass over a model's weights (export) holds one tensor in memory, not the
//! model. Also the writer's half: a safetensors file streamed tensor by tensor.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorInfo, TensorView};

use super::{ModelDirError, io_err as io};

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    data_start: u64,
    info: TensorInfo,
}

/// The tensors of a set of safetensors files, by name.
#[derive(Debug, Clone)]
pub struct TensorFiles {
    files: Vec<PathBuf>,
    entries: BTreeMap<String, Entry>,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> ModelDirError {
    ModelDirError::Unsupported(format!("{}: {why}", path.display()))
}

/// A header is at most this large (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

impl TensorFiles {
    /// Read the headers of `files`.
    pub fn open(files: &[PathBuf]) -> Result<Self, ModelDirError> {
        let mut entries = BTreeMap::new();
        for (index, path) in files.iter().enumerate() {
            let mut f = std::fs::File::open(path).map_err(io(path))?;
            let mut len = [0u8; 8];
            f.read_exact(&mut len).map_err(io(path))?;
            let len = u64::from_le_bytes(len);
            if len > MAX_HEADER {
                return Err(bad(path, "the safetensors header is too large"));
            }
            let mut header = vec![0u8; len as usize];
            f.read_exact(&mut header).map_err(io(path))?;
            let header: BTreeMap<String, serde_json::Value> =
                serde_json::from_slice(&header).map_err(|e| bad(path, e))?;
            for (name, value) in header {
                if name == "__metadata__" {
                    continue;
                }
                let info: TensorInfo = serde_json::from_value(value).map_err(|e| bad(path, e))?;
                let entry = Entry {
                    file: index,
                    data_start: 8 + len,
                    info,
                };
                entries.insert(name, entry);
            }
        }
        Ok(Self {
            files: files.to_vec(),
            entries,
        })
    }

    /// Every tensor's name and shape, by name.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.entries
            .iter()
            .map(|(n, e)| (n.as_str(), e.info.shape.as_slice()))
    }

    /// The shape of `name`, if the files hold it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.info.shape.as_slice())
    }

    /// Tensor `name`, read from its file onto the CPU in its stored dtype.
    pub fn read(&self, name: &str) -> Result<Tensor, ModelDirError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModelDirError::Unsupported(format!("no tensor named {name}")))?;
        let path = &self.files[entry.file];
        let (begin, end) = entry.info.data_offsets;
        let mut f = std::fs::File::open(path).map_err(io(path))?;
        f.seek(SeekFrom::Start(entry.data_start + begin as u64))
            .map_err(io(path))?;
        let mut bytes = vec![0u8; end.saturating_sub(begin)];
        f.read_exact(&mut bytes).map_err(io(path))?;
        let view = TensorView::new(entry.info.dtype, entry.info.shape.clone(), &bytes)
            .map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
        view.load(&Device::Cpu)
            .map_err(|source| ModelDirError::Tensor {
                context: "reading a stored tensor",
                source,
            })
    }
}

/// The safetensors dtype of raw bytes written as `dtype`.
pub fn stored_dtype(dtype: candle_core::DType) -> Option<Dtype> {
    Some(match dtype {
        candle_core::DType::F32 => Dtype::F32,
        candle_core::DType::F16 => Dtype::F16,
        candle_core::DType::BF16 => Dtype::BF16,
        _ => return None,
    })
}

/// Write a safetensors file to `w` whose tensors are `layout` (name, dtype, shape, in file order),
/// asking `bytes` for each tensor's little-endian data as it gets to it.
pub fn write_streamed<W: Write>(
    w: &mut W,
    layout: &[(String, Dtype, Vec<usize>)],
    mut bytes: impl FnMut(&str) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    let mut sizes = Vec::with_capacity(layout.len());
    for (name, dtype, shape) in layout {
        let size = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        let info = TensorInfo {
            dtype: *dtype,
            shape: shape.clone(),
            data_offsets: (offset, offset + size),
        };
        header.insert(name.clone(), serde_json::to_value(info)?);
        sizes.push(size);
        offset += size;
    }
    let mut text = serde_json::to_vec(&header)?;
    // The data starts 8-byte aligned, as safetensors pads its header with spaces.
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(&text)?;
    for ((name, _, _), size) in layout.iter().zip(sizes) {
        let data = bytes(name)?;
        if data.len() != size {
            return Err(std::io::Error::other(format!(
                "tensor {name} has {} bytes, its header says {size}",
                data.len()
            )));
        }
        w.write_all(&data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::DType;

    use super::*;

    #[test]
    fn tensors_read_one_at_a_time_equal_candles_load_and_stream_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = Tensor::ones(5, DType::F16, &Device::Cpu).unwrap();
        let path = dir.path().join("m.safetensors");
        candle_core::safetensors::save(
            &HashMap::from([("a".to_owned(), a.clone()), ("b".to_owned(), b.clone())]),
            &path,
        )
        .unwrap();
        let files = TensorFiles::open(std::slice::from_ref(&path)).unwrap();
        assert_eq!(files.shape("a"), Some(&[3, 4][..]));
        let read = files.read("a").unwrap();
        let diff = (read - &a).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(files.read("b").unwrap().dtype(), DType::F16);
        assert!(files.read("c").is_err());

        // Streamed back out in bf16, it loads with candle as the same values.
        let out = dir.path().join("out.safetensors");
        let layout = vec![("a".to_owned(), Dtype::BF16, vec![3, 4])];
        let mut f = std::fs::File::create(&out).unwrap();
        write_streamed(&mut f, &layout, |name| {
            let t = files.read(name).unwrap().to_dtype(DType::BF16).unwrap();
            let q = candle_core::quantized::QTensor::quantize(
                &t.to_dtype(DType::F32).unwrap(),
                candle_core::quantized::GgmlDType::BF16,
            )
            .unwrap();
            Ok(q.data().unwrap().into_owned())
        })
        .unwrap();
        drop(f);
        let back = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
        let back = back["a"].to_dtype(DType::F32).unwrap();
        let diff = (back - &a).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
