//! Weights read back out of a model, float or 4-bit, as the checkpoint import and the
//! reference forward take them.

use crate::names::{self};
use crate::onnx::{DataLocation, DataType, ModelProto, TensorProto};
use crate::weights::{NamedTensor, TensorMap};
use crate::{Error, Result};

/// Every float initializer of the model (float32, or float16 widened), by name: the weights
/// an export holds. A 4-bit weight (`W_q4` and `W_scales`) comes back as `W`, dequantized to
/// what the stored blocks mean, in the layout of its float form.
pub fn float_initializers(model: &ModelProto) -> Result<TensorMap> {
    let mut map = TensorMap::default();
    let Some(graph) = &model.graph else {
        return Ok(map);
    };
    let mut int4 = Vec::new();
    for t in &graph.initializer {
        if let Some(base) = t.name.strip_suffix(names::INT4_BLOCKS_SUFFIX) {
            int4.push((base, t));
            continue;
        }
        if t.data_location == DataLocation::External as i32 {
            return Err(Error::Weight {
                name: t.name.clone(),
                reason: "external data not read in (use read_model_with_data)".into(),
            });
        }
        let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        let Some(data) = float_values(t) else { continue };
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::Weight {
                name: t.name.clone(),
                reason: format!("{} values for shape {shape:?}", data.len()),
            });
        }
        map.0.insert(t.name.clone(), NamedTensor { shape, data });
    }
    for (base, blocks) in int4 {
        let scales_name = format!("{base}{}", names::INT4_SCALES_SUFFIX);
        let scales = graph.initializer.iter().find(|t| t.name == scales_name);
        let scales = scales.ok_or_else(|| Error::Weight {
            name: blocks.name.clone(),
            reason: format!("no `{scales_name}`"),
        })?;
        let q = int4_matrix(blocks, scales)?;
        map.0.remove(&scales_name);
        let (n, k) = (q.n, q.k);
        // The output head is `[vocab, emb]` like the token embedding (4-bit when the head is
        // tied to it); projections are `[in, out]`.
        let tables = [names::GPT2_MODULES, names::LLAMA_MODULES].map(|m| m.token_embedding);
        let rows_are_outputs = base == names::OUTPUT_HEAD || tables.contains(&base);
        let shape = if rows_are_outputs { vec![n, k] } else { vec![k, n] };
        map.0.insert(base.to_string(), NamedTensor { shape, data: q.dequantize(rows_are_outputs) });
    }
    Ok(map)
}

/// A float initializer's values (float32, or float16 widened); `None` for other types.
fn float_values(t: &TensorProto) -> Option<Vec<f32>> {
    match DataType::try_from(t.data_type) {
        Ok(DataType::Float) if t.raw_data.is_empty() => Some(t.float_data.clone()),
        Ok(DataType::Float) => Some(
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Ok(DataType::Float16) => Some(
            t.raw_data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// The 4-bit matrix a `MatMulNBits` weight (`W_q4`, `[n, k / 32, 16]` bytes) and its scales
/// (`[n * k / 32]` floats) hold, checked to agree.
pub fn int4_matrix(blocks: &TensorProto, scales: &TensorProto) -> Result<crate::quant::Int4Matrix> {
    let bad = |reason: String| Error::Weight { name: blocks.name.clone(), reason };
    let values = float_values(scales)
        .ok_or_else(|| bad(format!("scales `{}` are not floats", scales.name)))?;
    let count = values.len();
    let dims: Vec<usize> = blocks.dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
    crate::quant::Int4Matrix::from_stored(&dims, blocks.raw_data.clone(), values)
        .ok_or_else(|| bad(format!("4-bit blocks of dims {:?} and {count} scales", blocks.dims)))
}
