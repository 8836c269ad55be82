//! A tensor as PyTorch stores it: a typed, strided view into the bytes of a storage that other
//! tensors may share. Views are checked against their storage when made, and turned into
//! float32 values only when asked, so nothing is allocated for a tensor nobody uses.

use crate::{Error, Result};

/// The element types of PyTorch's storages (little-endian, as `torch.save` writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// PyTorch's name (`torch.float32` without `torch.`).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::F64 => "float64",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }

    /// The storage class `torch.save` names in a persistent id (`torch.FloatStorage`, ...).
    pub fn of_storage_class(class: &str) -> Option<Dtype> {
        Some(match class {
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "DoubleStorage" => Dtype::F64,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }

    /// The types a weight may come in: gptc builds float32 (or float16) graphs from these exactly.
    pub fn is_weight_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }
}

/// One named tensor: `shape` and `strides` (in elements) over `storage` from `offset`.
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    pub offset: usize,
    /// PyTorch's negative bit (`_neg_view()`): the storage holds the values un-negated.
    pub negated: bool,
    storage: &'a [u8],
}

fn bad(name: &str, reason: impl Into<String>) -> Error {
    Error::Weight { name: name.into(), reason: reason.into() }
}

impl<'a> TensorView<'a> {
    /// A view, refused unless every element it can reach lies inside `storage`.
    pub fn new(
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        strides: Vec<usize>,
        offset: usize,
        storage: &'a [u8],
    ) -> Result<TensorView<'a>> {
        // Names reach error messages, which stay one line.
        if name.chars().any(char::is_control) {
            return Err(bad(
                &name.escape_debug().to_string(),
                "has control characters in its name",
            ));
        }
        if shape.len() != strides.len() {
            return Err(bad(&name, format!("{} dims but {} strides", shape.len(), strides.len())));
        }
        let overflow = || bad(&name, "its shape, strides and offset overflow");
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(overflow)?;
        if numel > 0 {
            let last = shape.iter().zip(&strides).try_fold(offset, |end, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|reach| end.checked_add(reach))
            });
            let last = last.ok_or_else(overflow)?;
            let stored = storage.len() / dtype.size();
            if last >= stored {
                return Err(bad(
                    &name,
                    format!(
                        "reaches element {last} of a storage of {stored} {} elements: the storage is shorter than its tensor",
                        dtype.name()
                    ),
                ));
            }
        }
        Ok(TensorView { name, dtype, shape, strides, offset, negated: false, storage })
    }

    /// A row-major tensor that starts at the first byte of `data` (a safetensors entry).
    pub fn contiguous(
        name: String,
        dtype: Dtype,
        shape: Vec<usize>,
        data: &'a [u8],
    ) -> Result<TensorView<'a>> {
        let strides = row_major_strides(&shape);
        TensorView::new(name, dtype, shape, strides, 0, data)
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values, row-major, in float32 (exact for float16 and bfloat16; bool as 0 and 1).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let decode: fn(&[u8]) -> f32 = match self.dtype {
            Dtype::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Dtype::F16 => |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::BF16 => |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dtype::Bool => |b| if b[0] != 0 { 1.0 } else { 0.0 },
            other => {
                return Err(bad(
                    &self.name,
                    format!(
                        "dtype {}; gptc reads float32, float16 and bfloat16 tensors",
                        other.name()
                    ),
                ))
            }
        };
        let size = self.dtype.size();
        let sign = if self.negated { -1.0 } else { 1.0 };
        let element = |index: usize| sign * decode(&self.storage[index * size..(index + 1) * size]);
        let numel = self.numel();
        if self.strides == row_major_strides(&self.shape) {
            return Ok((self.offset..self.offset + numel).map(element).collect());
        }
        // Any other layout: walk the indices like an odometer, the last dim fastest. `new`
        // checked that the largest index reached lies inside the storage.
        let mut values = Vec::with_capacity(numel);
        let mut index = vec![0usize; self.shape.len()];
        let mut at = self.offset;
        for _ in 0..numel {
            values.push(element(at));
            // Past the last element the walk wraps every dim back; wrapping arithmetic keeps
            // those unread positions from overflowing.
            for d in (0..index.len()).rev() {
                index[d] += 1;
                at = at.wrapping_add(self.strides[d]);
                if index[d] < self.shape[d] {
                    break;
                }
                at = at.wrapping_sub(self.strides[d].wrapping_mul(self.shape[d]));
                index[d] = 0;
            }
        }
        Ok(values)
    }
}

fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1].saturating_mul(shape[d + 1]);
    }
    strides
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn view(shape: &[usize], strides: &[usize], offset: usize, storage: &[u8]) -> Result<Vec<f32>> {
        TensorView::new("t".into(), Dtype::F32, shape.into(), strides.into(), offset, storage)?
            .to_f32()
    }

    #[test]
    fn strides_and_offsets_select_the_elements_pytorch_would() {
        let storage = f32_bytes(&(0..12).map(|v| v as f32).collect::<Vec<_>>());
        // A [3, 4] matrix, its transpose, a column slice with stride 2, a row at an offset.
        assert_eq!(view(&[3, 4], &[4, 1], 0, &storage).unwrap()[5], 5.0);
        assert_eq!(
            view(&[4, 3], &[1, 4], 0, &storage).unwrap(),
            [0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]
        );
        assert_eq!(view(&[3, 2], &[4, 2], 0, &storage).unwrap(), [0., 2., 4., 6., 8., 10.]);
        assert_eq!(view(&[4], &[1], 8, &storage).unwrap(), [8., 9., 10., 11.]);
        // Broadcast (stride 0) and empty tensors.
        assert_eq!(view(&[2, 2], &[0, 1], 1, &storage).unwrap(), [1., 2., 1., 2.]);
        assert!(view(&[0, 5], &[5, 1], 100, &storage).unwrap().is_empty());
    }

    #[test]
    fn a_view_past_its_storage_is_refused_before_any_read() {
        let storage = f32_bytes(&[0.0; 12]);
        for (shape, strides, offset) in [
            (vec![3, 4], vec![4, 1], 1),
            (vec![13], vec![1], 0),
            (vec![2, 2], vec![usize::MAX, 1], 0),
            (vec![usize::MAX, usize::MAX], vec![1, 1], 0),
        ] {
            let err = view(&shape, &strides, offset, &storage).unwrap_err().to_string();
            assert!(err.contains("storage is shorter") || err.contains("overflow"), "{err}");
        }
    }

    #[test]
    fn half_precisions_and_the_negative_bit_read_exactly() {
        let halves: Vec<u8> = [half::f16::from_f32(-1.5), half::f16::from_f32(65504.0)]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let t = TensorView::contiguous("h".into(), Dtype::F16, vec![2], &halves).unwrap();
        assert_eq!(t.to_f32().unwrap(), [-1.5, 65504.0]);
        let brains: Vec<u8> = [half::bf16::from_f32(3.0e38), half::bf16::from_f32(-0.0078125)]
            .iter()
            .flat_map(|h| h.to_le_bytes())
            .collect();
        let mut t = TensorView::contiguous("b".into(), Dtype::BF16, vec![2], &brains).unwrap();
        t.negated = true;
        assert_eq!(t.to_f32().unwrap(), [-half::bf16::from_f32(3.0e38).to_f32(), 0.0078125]);
        let ints = [0u8; 8];
        let t = TensorView::contiguous("i".into(), Dtype::I64, vec![1], &ints).unwrap();
        assert!(t.to_f32().unwrap_err().to_string().contains("int64"));
    }
}
