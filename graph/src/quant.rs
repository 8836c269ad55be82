//! 4-bit weights, as ONNX Runtime's `com.microsoft.MatMulNBits` stores them: round to nearest,
//! per block of 32 along the input dimension, symmetric (zero point 8, so `w = (q - 8) s`).
//!
//! For a linear layer `y = x W` with `W` `[K, N]` (K inputs, N outputs), the op wants `W^T`:
//! `B` is `[N, K/32, 16]` bytes, each byte two weights of one block (the even-indexed one in the
//! low nibble), and `scales` is `[N * K/32]`. Each block's scale maps its largest-magnitude
//! weight to -8 (the full signed range, as ONNX Runtime's quantizer and GGML's Q4_0 do), and is
//! rounded to float16 first: tract keeps scales as float16, so a float16-exact scale makes both
//! runtimes dequantize to the same weights. A weight whose scale float16 cannot hold as a normal
//! number (overflowing to infinity, or losing its precision below float16's smallest normal
//! number) is refused rather than stored as another weight.
//!
//! [`MatMulNBits`] is the one reading of such a node that `check`, tract's loader and gptc's
//! kernel share: what ONNX Runtime 1.31's contrib op schema and CPU kernel accept, no more.

use crate::names::MICROSOFT_DOMAIN;
use crate::onnx::{AttributeType, DataType, ModelProto, NodeProto, TensorProto};
use crate::{Error, Result};

/// Weights per block.
pub const BLOCK: usize = 32;
/// Bytes per block: two 4-bit weights a byte.
pub const BLOB: usize = BLOCK / 2;

/// A matrix quantized to 4 bits per weight, stored transposed (`[N, K]`) in blocks along K.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Matrix {
    /// Inputs (the contracted dimension), a multiple of [`BLOCK`].
    pub k: usize,
    /// Outputs.
    pub n: usize,
    /// `[n, k / BLOCK, BLOB]`.
    pub blocks: Vec<u8>,
    /// `[n * k / BLOCK]`, each exactly representable in float16.
    pub scales: Vec<f32>,
}

impl Int4Matrix {
    /// The matrix of stored blocks `[n, k / 32, 16]` and scales `[n * k / 32]`, if they agree.
    /// The dims come from a file: sizes that overflow `usize` agree with nothing.
    pub fn from_stored(dims: &[usize], blocks: Vec<u8>, scales: Vec<f32>) -> Option<Int4Matrix> {
        let [n, per_row, blob] = dims[..] else { return None };
        let count = n.checked_mul(per_row)?;
        let k = per_row.checked_mul(BLOCK)?;
        let agree =
            blob == BLOB && count.checked_mul(BLOB) == Some(blocks.len()) && scales.len() == count;
        agree.then_some(Int4Matrix { k, n, blocks, scales })
    }

    /// Quantizes the weight `name`: `w`, `[k, n]` row-major (HF's `[in, out]` Conv1D layout), or
    /// with `transposed`, `[n, k]` (an embedding table used as the output head). Refused, naming
    /// the weight and the block: a `k` that is not a multiple of [`BLOCK`], a value that is not
    /// finite, and a block whose scale float16 cannot hold as a normal number.
    pub fn quantize(
        name: &str,
        w: &[f32],
        k: usize,
        n: usize,
        transposed: bool,
    ) -> Result<Int4Matrix> {
        let bad = |reason: String| Error::Weight { name: name.to_string(), reason };
        if !k.is_multiple_of(BLOCK) || k.checked_mul(n) != Some(w.len()) {
            return Err(bad(format!(
                "{} values for {k} inputs and {n} outputs in 4-bit blocks of {BLOCK}",
                w.len()
            )));
        }
        let at =
            |row: usize, col: usize| if transposed { w[row * k + col] } else { w[col * n + row] };
        let per_row = k / BLOCK;
        let mut blocks = vec![0u8; n * per_row * BLOB];
        let mut scales = vec![0f32; n * per_row];
        for row in 0..n {
            for b in 0..per_row {
                let values: [f32; BLOCK] = std::array::from_fn(|i| at(row, b * BLOCK + i));
                let scale = float16_scale(&values).map_err(|why| {
                    bad(format!("output {row}, inputs {}..{}: {why}", b * BLOCK, (b + 1) * BLOCK))
                })?;
                let inverse = if scale == 0.0 { 0.0 } else { 1.0 / scale };
                let code = |v: f32| ((v * inverse).round() + 8.0).clamp(0.0, 15.0) as u8;
                let blob = &mut blocks[(row * per_row + b) * BLOB..][..BLOB];
                for (byte, pair) in blob.iter_mut().zip(values.chunks_exact(2)) {
                    *byte = code(pair[0]) | (code(pair[1]) << 4);
                }
                scales[row * per_row + b] = scale;
            }
        }
        Ok(Int4Matrix { k, n, blocks, scales })
    }

    /// The 4-bit code (0..15) of input `col` of output `row`: even inputs in a byte's low nibble.
    pub fn code(&self, row: usize, col: usize) -> u8 {
        let byte = self.blocks[(row * (self.k / BLOCK) + col / BLOCK) * BLOB + col % BLOCK / 2];
        (byte >> (4 * (col % 2))) & 0x0f
    }

    /// The weights the stored blocks mean, `[k, n]` row-major (or `[n, k]` with `transposed`):
    /// what both runtimes compute with.
    pub fn dequantize(&self, transposed: bool) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let per_row = k / BLOCK;
        let mut w = vec![0f32; k * n];
        for row in 0..n {
            for col in 0..k {
                let scale = self.scales[row * per_row + col / BLOCK];
                let value = (self.code(row, col) as f32 - 8.0) * scale;
                let at = if transposed { row * k + col } else { col * n + row };
                w[at] = value;
            }
        }
        w
    }
}

/// The scale of one block, rounded to float16: its largest-magnitude value maps to code -8.
/// An error says why the block has none that float16 holds as a normal number.
fn float16_scale(values: &[f32]) -> std::result::Result<f32, String> {
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        return Err(format!("holds {v}; 4-bit weights must be finite"));
    }
    let extreme = values.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let scale = extreme / -8.0;
    fits_float16(scale)
        .map_err(|why| format!("the largest magnitude, {}, {why}", extreme.abs()))?;
    Ok(half::f16::from_f32(scale).to_f32())
}

/// Whether a 4-bit scale keeps its value in float16 (zero, or a normal number) and, if not, why.
fn fits_float16(scale: f32) -> std::result::Result<(), String> {
    let magnitude = scale.abs();
    if half::f16::from_f32(scale).is_infinite() {
        return Err(format!(
            "needs a 4-bit scale of {magnitude:e}, beyond float16's largest number ({})",
            half::f16::MAX
        ));
    }
    if magnitude != 0.0 && magnitude < half::f16::MIN_POSITIVE.to_f32() {
        return Err(format!(
            "needs a 4-bit scale of {magnitude:e}, below float16's smallest normal number ({:e}), where it would lose its precision or become 0",
            half::f16::MIN_POSITIVE.to_f32()
        ));
    }
    Ok(())
}

/// ONNX Runtime's element types for `A`, `scales` and `bias` on the CPU (its schema lists
/// bfloat16 too, but its CPU kernel is registered for these two only).
const ACTIVATION_TYPES: [DataType; 2] = [DataType::Float, DataType::Float16];

/// What a tensor is known to be: its element type and dims (`None` where not known, as for a
/// value computed by the graph before shape inference, or a symbolic dim).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TensorFact {
    pub dtype: Option<DataType>,
    /// `None` when the rank is not known.
    pub dims: Option<Vec<Option<u64>>>,
}

impl TensorFact {
    /// An initializer's element type and dims (a negative dim is kept as one no check accepts).
    pub fn of_initializer(t: &TensorProto) -> TensorFact {
        let dtype = DataType::try_from(t.data_type).unwrap_or(DataType::Undefined);
        let dims = t.dims.iter().map(|&d| Some(u64::try_from(d).unwrap_or(u64::MAX))).collect();
        TensorFact { dtype: Some(dtype), dims: Some(dims) }
    }
}

/// What a `MatMulNBits` node reads, as far as known. Optional inputs the node does not have
/// are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatMulNBitsInputs {
    pub a: TensorFact,
    pub b: TensorFact,
    pub scales: TensorFact,
    pub zero_points: Option<TensorFact>,
    pub g_idx: Option<TensorFact>,
    pub bias: Option<TensorFact>,
}

/// A `com.microsoft.MatMulNBits` node that ONNX Runtime 1.31 accepts on the CPU:
/// `Y = A dequant(B)^T`, `B` `[N, ceil(K / block_size), block_size * bits / 8]` bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MatMulNBits {
    /// The node's name (or its output's, when it has none), for messages.
    pub node: String,
    pub k: usize,
    pub n: usize,
    /// 2, 4 or 8.
    pub bits: usize,
    /// 16, 32, 64, 128 or 256.
    pub block_size: usize,
    /// As written: ONNX Runtime takes any value and quantizes `A` to int8 at 4 only.
    pub accuracy_level: i64,
    pub zero_points: bool,
    pub g_idx: bool,
    pub bias: bool,
}

/// Attributes the schema declares, all integers.
const ATTRIBUTES: [&str; 6] =
    ["K", "N", "bits", "block_size", "accuracy_level", "weight_prepacked"];

impl MatMulNBits {
    /// Reads a node named `MatMulNBits` (of any domain: one outside `com.microsoft` is refused)
    /// and checks what the node alone says: domain and opset, attributes, inputs and outputs.
    /// `microsoft_opset` is the version of `com.microsoft` the model imports, if it does.
    pub fn of_node(node: &NodeProto, microsoft_opset: Option<i64>) -> Result<MatMulNBits> {
        let name = match (node.name.is_empty(), node.output.first()) {
            (false, _) | (true, None) => node.name.clone(),
            (true, Some(output)) => output.clone(),
        };
        let bad = |reason: String| Error::Node { node: name.clone(), reason };
        if node.domain != MICROSOFT_DOMAIN {
            let domain = if node.domain.is_empty() { "ai.onnx" } else { &node.domain };
            return Err(bad(format!(
                "{} in domain `{domain}`: ONNX Runtime has it in `{MICROSOFT_DOMAIN}` only",
                node.op_type
            )));
        }
        if let Some(version) = microsoft_opset.filter(|&v| v != 1) {
            return Err(bad(format!(
                "the model imports `{MICROSOFT_DOMAIN}` opset {version}; ONNX Runtime knows version 1"
            )));
        }
        let mut values: [Option<i64>; ATTRIBUTES.len()] = [None; ATTRIBUTES.len()];
        for attribute in &node.attribute {
            let Some(slot) = ATTRIBUTES.iter().position(|&a| a == attribute.name) else {
                return Err(bad(format!(
                    "MatMulNBits has no attribute `{}` (it has {})",
                    attribute.name,
                    ATTRIBUTES.join(", ")
                )));
            };
            if attribute.r#type != AttributeType::Int as i32 {
                return Err(bad(format!("attribute `{}` is not an integer", attribute.name)));
            }
            if values[slot].replace(attribute.i).is_some() {
                return Err(bad(format!("attribute `{}` is given twice", attribute.name)));
            }
        }
        let [k, n, bits, block_size, accuracy_level, _] = values;
        let required = |value: Option<i64>, what: &str| {
            value.ok_or_else(|| bad(format!("MatMulNBits needs the attribute `{what}`")))
        };
        let positive = |value: i64, what: &str| {
            usize::try_from(value).ok().filter(|&v| v > 0).ok_or_else(|| {
                bad(format!(
                    "{what} is {value}: gptc runs matrices of at least one input and one output"
                ))
            })
        };
        let k = positive(required(k, "K")?, "K")?;
        let n = positive(required(n, "N")?, "N")?;
        let bits = bits.unwrap_or(4);
        if ![2, 4, 8].contains(&bits) {
            return Err(bad(format!("bits is {bits}: ONNX Runtime runs 2, 4 or 8")));
        }
        let block_size = required(block_size, "block_size")?;
        if ![16, 32, 64, 128, 256].contains(&block_size) {
            return Err(bad(format!(
                "block_size is {block_size}: ONNX Runtime runs 16, 32, 64, 128 or 256"
            )));
        }
        if node.output.len() != 1 || node.output[0].is_empty() {
            return Err(bad(format!("MatMulNBits has one output, not {}", node.output.len())));
        }
        let given = |i: usize| node.input.get(i).is_some_and(|input| !input.is_empty());
        if node.input.len() > 6 || !(0..3).all(given) {
            return Err(bad(format!(
                "inputs {:?}: MatMulNBits reads A, B and scales, then optionally zero_points, g_idx and bias",
                node.input
            )));
        }
        Ok(MatMulNBits {
            node: name.clone(),
            k,
            n,
            bits: bits as usize,
            block_size: block_size as usize,
            accuracy_level: accuracy_level.unwrap_or(0),
            zero_points: given(3),
            g_idx: given(4),
            bias: given(5),
        })
    }

    /// Blocks per output: `ceil(K / block_size)`.
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.block_size)
    }

    fn error(&self, reason: String) -> Error {
        Error::Node { node: self.node.clone(), reason }
    }

    /// Checks `A` as far as it is known: a float or float16 tensor of rank 1 or more whose last
    /// dim is `K`.
    pub fn check_activation(&self, a: &TensorFact) -> Result<()> {
        if let Some(dtype) = a.dtype.filter(|t| !ACTIVATION_TYPES.contains(t)) {
            return Err(self.error(format!(
                "input A is {}: ONNX Runtime's CPU kernel takes float or float16",
                dtype.onnx_name()
            )));
        }
        match a.dims.as_deref() {
            Some([]) => Err(self.error(
                "input A has rank 0: MatMulNBits multiplies the last dim of a tensor of rank 1 or more".into(),
            )),
            Some([.., Some(last)]) if *last != self.k as u64 => Err(self.error(format!(
                "input A has {last} values in its last dim, K is {}",
                self.k
            ))),
            _ => Ok(()),
        }
    }

    /// Checks every input's element type and dims, as far as known, against the attributes.
    pub fn check_inputs(&self, inputs: &MatMulNBitsInputs) -> Result<()> {
        self.check_activation(&inputs.a)?;
        let (n, k) = (self.n as u64, self.k as u64);
        let k_blocks = self.k_blocks() as u64;
        let blob = (self.block_size * self.bits / 8) as u64;
        let per_node = n.checked_mul(k_blocks);
        // Types: B uint8; scales and bias A's type (a float type when A's is not known yet).
        let float_like = inputs.a.dtype.map_or(ACTIVATION_TYPES.to_vec(), |t| vec![t]);
        self.check_type("B", &inputs.b, &[DataType::Uint8])?;
        self.check_type("scales", &inputs.scales, &float_like)?;
        if let Some(bias) = &inputs.bias {
            self.check_type("bias", bias, &float_like)?;
            self.check_dims("bias", bias, &[vec![Some(n)]])?;
        }
        self.check_dims("B", &inputs.b, &[vec![Some(n), Some(k_blocks), Some(blob)]])?;
        self.check_dims(
            "scales",
            &inputs.scales,
            &[vec![per_node], vec![Some(n), Some(k_blocks)]],
        )?;
        if let Some(zero_points) = &inputs.zero_points {
            let types = [DataType::Uint8, DataType::Float, DataType::Float16, DataType::Bfloat16];
            self.check_type("zero_points", zero_points, &types)?;
            // Packed as B is (uint8), or one value a block.
            let per_row = match zero_points.dtype {
                Some(DataType::Uint8) => (k_blocks * self.bits as u64).div_ceil(8),
                _ => k_blocks,
            };
            let shapes = [vec![n.checked_mul(per_row)], vec![Some(n), Some(per_row)]];
            self.check_dims("zero_points", zero_points, &shapes)?;
        }
        if let Some(g_idx) = &inputs.g_idx {
            self.check_type("g_idx", g_idx, &[DataType::Int32])?;
            let padded = k_blocks.checked_mul(self.block_size as u64);
            self.check_dims("g_idx", g_idx, &[vec![Some(k)], vec![padded]])?;
        }
        Ok(())
    }

    fn check_type(&self, what: &str, fact: &TensorFact, allowed: &[DataType]) -> Result<()> {
        match fact.dtype {
            Some(t) if !allowed.contains(&t) => {
                let names: Vec<&str> = allowed.iter().map(|t| t.onnx_name()).collect();
                Err(self.error(format!(
                    "input {what} is {}; MatMulNBits takes {} here",
                    t.onnx_name(),
                    names.join(" or ")
                )))
            }
            _ => Ok(()),
        }
    }

    /// `fact`'s dims must be one of `shapes` (a `None` in a shape is a size that overflowed,
    /// which no dims match); unknown dims pass.
    fn check_dims(&self, what: &str, fact: &TensorFact, shapes: &[Vec<Option<u64>>]) -> Result<()> {
        let Some(dims) = &fact.dims else { return Ok(()) };
        let matches = |shape: &Vec<Option<u64>>| {
            shape.len() == dims.len()
                && shape.iter().zip(dims).all(|(want, got)| match (want, got) {
                    (Some(want), Some(got)) => want == got,
                    (None, _) => false,
                    (_, None) => true,
                })
        };
        if shapes.iter().any(matches) {
            return Ok(());
        }
        let show = |dims: &[Option<u64>]| {
            let shown: Vec<String> =
                dims.iter().map(|d| d.map_or("?".into(), |d| d.to_string())).collect();
            format!("[{}]", shown.join(", "))
        };
        let wanted: Vec<String> = shapes.iter().map(|s| show(s)).collect();
        Err(self.error(format!(
            "input {what} has dims {}; K {} N {} bits {} block_size {} need {}",
            show(dims),
            self.k,
            self.n,
            self.bits,
            self.block_size,
            wanted.join(" or ")
        )))
    }

    /// Checks that float32 scales keep their values in float16, as tract holds them: none is
    /// finite but beyond float16's range, or non-zero but below its smallest normal number.
    pub fn check_scales_fit_float16(&self, scales: &[f32]) -> Result<()> {
        for (i, &scale) in scales.iter().enumerate().filter(|(_, s)| s.is_finite()) {
            fits_float16(scale).map_err(|why| {
                self.error(format!(
                    "scale {i} ({scale:e}) {why}; tract holds 4-bit scales in float16"
                ))
            })?;
        }
        Ok(())
    }
}

/// Checks every `MatMulNBits` node of `model`, whatever its domain, with what the file itself
/// says of its inputs (initializers' types and dims; the rest is left to shape inference).
pub fn check_model(model: &ModelProto) -> Result<()> {
    let Some(graph) = &model.graph else { return Ok(()) };
    let opset = model.opset_import.iter().find(|o| o.domain == MICROSOFT_DOMAIN).map(|o| o.version);
    let fact = |name: Option<&String>| -> Option<TensorFact> {
        let name = name.filter(|n| !n.is_empty())?;
        let initializer = graph.initializer.iter().find(|t| &t.name == name);
        Some(initializer.map_or_else(TensorFact::default, TensorFact::of_initializer))
    };
    for node in graph.node.iter().filter(|n| n.op_type == "MatMulNBits") {
        let op = MatMulNBits::of_node(node, opset)?;
        let inputs = MatMulNBitsInputs {
            a: fact(node.input.first()).unwrap_or_default(),
            b: fact(node.input.get(1)).unwrap_or_default(),
            scales: fact(node.input.get(2)).unwrap_or_default(),
            zero_points: fact(node.input.get(3)),
            g_idx: fact(node.input.get(4)),
            bias: fact(node.input.get(5)),
        };
        op.check_inputs(&inputs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::AttributeProto;

    fn quantize(w: &[f32], k: usize, n: usize, transposed: bool) -> Int4Matrix {
        Int4Matrix::quantize("w", w, k, n, transposed).unwrap()
    }

    #[test]
    fn round_to_nearest_within_half_a_step_and_the_extreme_exact() {
        let (k, n) = (64, 3);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919 % 201) as f32 - 100.0) / 1000.0).collect();
        let q = quantize(&w, k, n, false);
        assert_eq!((q.blocks.len(), q.scales.len()), (n * 2 * BLOB, n * 2));
        let back = q.dequantize(false);
        for (row, col) in (0..n).flat_map(|r| (0..k).map(move |c| (r, c))) {
            let scale = q.scales[row * 2 + col / BLOCK];
            let (orig, got) = (w[col * n + row], back[col * n + row]);
            // Codes span -8..7 steps: the extreme maps to -8 exactly, and only values past 7.5
            // steps on the other side are clamped to 7.
            let clamped = orig / scale >= 7.5 && got == 7.0 * scale;
            assert!(
                (orig - got).abs() <= scale.abs() / 2.0 + 1e-7 || clamped,
                "{orig} vs {got} (step {scale})"
            );
        }
        // Every scale is a float16 number, and each block's extreme comes back to within rounding.
        for s in &q.scales {
            assert_eq!(half::f16::from_f32(*s).to_f32(), *s);
        }
    }

    #[test]
    fn the_packing_is_onnx_runtimes() {
        // One block: weights -8..7 times 0.5 map to codes 0..15, packed low nibble first.
        let w: Vec<f32> = (0..32).map(|i| ((i % 16) as f32 - 8.0) * 0.5).collect();
        let q = quantize(&w, 32, 1, true);
        assert_eq!(q.scales, [0.5]);
        assert_eq!(q.blocks[..4], [0x10, 0x32, 0x54, 0x76]);
        assert_eq!(q.dequantize(true), w);
    }

    #[test]
    fn transposed_tables_quantize_by_rows() {
        let (k, n) = (32, 2);
        let w: Vec<f32> = (0..k * n).map(|i| i as f32 / 64.0).collect();
        let rows = quantize(&w, k, n, true);
        let columns: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        assert_eq!(quantize(&columns, k, n, false), rows);
    }

    #[test]
    fn weights_whose_scales_float16_cannot_hold_are_refused_naming_weight_and_block() {
        let (k, n) = (64, 2);
        let base: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.37).sin() * 0.05).collect();
        let with = |at: usize, value: f32| {
            let mut w = base.clone();
            w[at] = value;
            Int4Matrix::quantize("h.0.mlp.c_fc.weight", &w, k, n, false)
        };
        assert!(with(0, 0.05).is_ok());
        // Input 40 of output 1 (`[k, n]` layout): the second block of the second row.
        for (value, why) in [
            (1e6, "beyond float16's largest"),
            (-1e6, "beyond float16's largest"),
            (f32::NAN, "must be finite"),
            (f32::INFINITY, "must be finite"),
        ] {
            let err = with(40 * n + 1, value).unwrap_err().to_string();
            assert!(err.contains("`h.0.mlp.c_fc.weight`"), "{err}");
            assert!(err.contains("output 1, inputs 32..64") && err.contains(why), "{err}");
        }
        // A block of tiny weights: its scale would be a float16 subnormal (or 0).
        let mut tiny = base.clone();
        for col in 32..64 {
            tiny[col * n] = 1e-9 * (col as f32 - 40.0);
        }
        let err = Int4Matrix::quantize("t", &tiny, k, n, false).unwrap_err().to_string();
        assert!(
            err.contains("output 0, inputs 32..64") && err.contains("smallest normal"),
            "{err}"
        );
        // A block of zeros has scale 0, which float16 holds.
        let mut zeros = base.clone();
        (32..64).for_each(|col| zeros[col * n] = 0.0);
        let q = Int4Matrix::quantize("z", &zeros, k, n, false).unwrap();
        assert_eq!(q.scales[1], 0.0);
        assert!(Int4Matrix::quantize("odd", &base[..k * n - 1], k, n, false).is_err());
    }

    #[test]
    fn stored_dims_that_overflow_agree_with_nothing() {
        // `n * per_row * 16` wraps to 0 in 64 bits: empty blocks and scales must not pass.
        assert_eq!(Int4Matrix::from_stored(&[1 << 63, 2, BLOB], vec![], vec![]), None);
        assert_eq!(Int4Matrix::from_stored(&[1 << 60, 1, BLOB], vec![], vec![0.0; 0]), None);
        assert_eq!(Int4Matrix::from_stored(&[1, usize::MAX / 2, BLOB], vec![], vec![]), None);
        let ok = Int4Matrix::from_stored(&[2, 1, BLOB], vec![0; 32], vec![1.0; 2]).unwrap();
        assert_eq!((ok.k, ok.n), (32, 2));
    }

    fn int(name: &str, i: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i,
            ..Default::default()
        }
    }

    fn node(attributes: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            input: vec!["x".into(), "w_q4".into(), "w_scales".into()],
            output: vec!["y".into()],
            name: "h.0.mlp.c_fc.MatMulNBits".into(),
            op_type: "MatMulNBits".into(),
            domain: MICROSOFT_DOMAIN.into(),
            attribute: attributes,
            ..Default::default()
        }
    }

    fn gptcs() -> Vec<AttributeProto> {
        vec![
            int("K", 64),
            int("N", 8),
            int("bits", 4),
            int("block_size", 32),
            int("accuracy_level", 4),
        ]
    }

    fn fact(dtype: DataType, dims: &[u64]) -> TensorFact {
        TensorFact { dtype: Some(dtype), dims: Some(dims.iter().map(|&d| Some(d)).collect()) }
    }

    fn inputs() -> MatMulNBitsInputs {
        MatMulNBitsInputs {
            a: fact(DataType::Float, &[1, 5, 64]),
            b: fact(DataType::Uint8, &[8, 2, 16]),
            scales: fact(DataType::Float, &[16]),
            ..Default::default()
        }
    }

    fn refusal(attributes: Vec<AttributeProto>, edit: impl Fn(&mut NodeProto)) -> String {
        let mut node = node(attributes);
        edit(&mut node);
        let err = MatMulNBits::of_node(&node, Some(1)).unwrap_err().to_string();
        assert!(err.starts_with("node `h.0.mlp.c_fc.MatMulNBits`: "), "{err}");
        err
    }

    fn with(name: &str, i: i64) -> Vec<AttributeProto> {
        let mut attributes = gptcs();
        attributes.retain(|a| a.name != name);
        attributes.push(int(name, i));
        attributes
    }

    #[test]
    fn nodes_are_read_as_onnx_runtime_reads_them() {
        let op = MatMulNBits::of_node(&node(gptcs()), Some(1)).unwrap();
        assert_eq!((op.k, op.n, op.bits, op.block_size, op.accuracy_level), (64, 8, 4, 32, 4));
        assert!(!op.zero_points && !op.g_idx && !op.bias);
        op.check_inputs(&inputs()).unwrap();
        // bits defaults to 4, accuracy_level to 0 (any value is taken); no opset import is fine.
        let mut defaults = gptcs();
        defaults.retain(|a| a.name != "bits" && a.name != "accuracy_level");
        defaults.push(int("weight_prepacked", 1));
        let op = MatMulNBits::of_node(&node(defaults), None).unwrap();
        assert_eq!((op.bits, op.accuracy_level), (4, 0));
        assert_eq!(
            MatMulNBits::of_node(&node(with("accuracy_level", 100)), None).unwrap().accuracy_level,
            100
        );
        for bits in [2, 8] {
            MatMulNBits::of_node(&node(with("bits", bits)), None).unwrap();
        }
        for block_size in [16, 64, 128, 256] {
            MatMulNBits::of_node(&node(with("block_size", block_size)), None).unwrap();
        }
        let keep = |_: &mut NodeProto| {};
        assert!(refusal(with("bits", 3), keep).contains("bits is 3"));
        assert!(refusal(with("bits", 1), keep).contains("bits is 1"));
        for block_size in [0, 8, 24, 48, 512, 2048] {
            let err = refusal(with("block_size", block_size), keep);
            assert!(err.contains(&format!("block_size is {block_size}")), "{err}");
        }
        assert!(refusal(with("K", 0), keep).contains("K is 0"));
        assert!(refusal(with("N", 0), keep).contains("N is 0"));
        assert!(refusal(with("K", -32), keep).contains("K is -32"));
        let mut missing = gptcs();
        missing.remove(0);
        assert!(refusal(missing, keep).contains("`K`"));
        assert!(refusal(with("foo", 1), keep).contains("no attribute `foo`"));
        let mut twice = gptcs();
        twice.push(int("K", 64));
        assert!(refusal(twice, keep).contains("twice"));
        let mut float = gptcs();
        float[0].r#type = AttributeType::Float as i32;
        assert!(refusal(float, keep).contains("not an integer"));
        let err = refusal(gptcs(), |n| n.domain.clear());
        assert!(err.contains("domain `ai.onnx`"), "{err}");
        assert!(refusal(gptcs(), |n| n.domain = "com.other".into()).contains("`com.other`"));
        assert!(refusal(gptcs(), |n| n.output.push("z".into())).contains("one output"));
        assert!(refusal(gptcs(), |n| n.input.truncate(2)).contains("inputs"));
        assert!(refusal(gptcs(), |n| n.input.resize(7, String::new())).contains("inputs"));
        let err = MatMulNBits::of_node(&node(gptcs()), Some(2)).unwrap_err().to_string();
        assert!(err.contains("opset 2"), "{err}");
    }

    #[test]
    fn inputs_are_checked_against_the_attributes() {
        let op = MatMulNBits::of_node(&node(gptcs()), None).unwrap();
        let refused = |edit: &dyn Fn(&mut MatMulNBitsInputs)| {
            let mut inputs = inputs();
            edit(&mut inputs);
            op.check_inputs(&inputs).unwrap_err().to_string()
        };
        // B shaped for another bit width or block size.
        assert!(refused(&|i| i.b = fact(DataType::Uint8, &[8, 2, 8]))
            .contains("input B has dims [8, 2, 8]"));
        assert!(refused(&|i| i.b = fact(DataType::Uint8, &[8, 32])).contains("input B"));
        assert!(refused(&|i| i.b = fact(DataType::Int8, &[8, 2, 16])).contains("input B is int8"));
        for dtype in [DataType::Int64, DataType::Uint8, DataType::Float16] {
            let err = refused(&|i| i.scales = fact(dtype, &[16]));
            assert!(err.contains(&format!("input scales is {}", dtype.onnx_name())), "{err}");
        }
        assert!(refused(&|i| i.scales = fact(DataType::Float, &[17])).contains("input scales"));
        assert!(refused(&|i| i.scales = fact(DataType::Float, &[16, 1])).contains("input scales"));
        let err = refused(&|i| i.a = fact(DataType::Float, &[]));
        assert!(err.contains("rank 0"), "{err}");
        assert!(refused(&|i| i.a = fact(DataType::Float, &[1, 32])).contains("K is 64"));
        assert!(refused(&|i| i.a = fact(DataType::Double, &[64])).contains("input A is double"));
        assert!(refused(&|i| i.a = fact(DataType::Bfloat16, &[64])).contains("bfloat16"));
        let err = refused(&|i| i.bias = Some(fact(DataType::Float, &[1, 8])));
        assert!(err.contains("input bias"), "{err}");
        assert!(refused(&|i| i.zero_points = Some(fact(DataType::Uint8, &[16])))
            .contains("zero_points"));
        assert!(refused(&|i| i.zero_points = Some(fact(DataType::Int32, &[16]))).contains("int32"));
        assert!(refused(&|i| i.g_idx = Some(fact(DataType::Int32, &[63]))).contains("g_idx"));
        // What ONNX Runtime takes: 2-d scales, packed or per-block zero points, a bias, rank 1.
        let accepted = |edit: &dyn Fn(&mut MatMulNBitsInputs)| {
            let mut inputs = inputs();
            edit(&mut inputs);
            op.check_inputs(&inputs).unwrap();
        };
        accepted(&|i| i.scales = fact(DataType::Float, &[8, 2]));
        accepted(&|i| i.zero_points = Some(fact(DataType::Uint8, &[8])));
        accepted(&|i| i.zero_points = Some(fact(DataType::Uint8, &[8, 1])));
        accepted(&|i| i.zero_points = Some(fact(DataType::Float16, &[8, 2])));
        accepted(&|i| i.g_idx = Some(fact(DataType::Int32, &[64])));
        accepted(&|i| i.bias = Some(fact(DataType::Float, &[8])));
        accepted(&|i| i.a = fact(DataType::Float, &[64]));
        accepted(&|i| i.a = TensorFact { dtype: None, dims: Some(vec![None, None]) });
        accepted(&|i| {
            i.a = fact(DataType::Float16, &[2, 64]);
            i.scales = fact(DataType::Float16, &[16]);
        });
        // A partial last block: K 40 in blocks of 32 is two blocks.
        let op = MatMulNBits::of_node(&node(with("K", 40)), None).unwrap();
        let mut partial = inputs();
        partial.a = fact(DataType::Float, &[40]);
        op.check_inputs(&partial).unwrap();
    }

    #[test]
    fn sizes_that_overflow_match_no_dims() {
        let op = MatMulNBits::of_node(&node(with("N", i64::MAX)), None).unwrap();
        let mut inputs = inputs();
        inputs.b = fact(DataType::Uint8, &[i64::MAX as u64, 2, 16]);
        inputs.scales = fact(DataType::Float, &[0]);
        let err = op.check_inputs(&inputs).unwrap_err().to_string();
        assert!(err.contains("input scales"), "{err}");
    }

    #[test]
    fn scales_beyond_float16_are_named() {
        let op = MatMulNBits::of_node(&node(gptcs()), None).unwrap();
        op.check_scales_fit_float16(&[0.0, 1.0, -65504.0, 6.2e-5, f32::NAN]).unwrap();
        let err = op.check_scales_fit_float16(&[1.0, 1.25e5]).unwrap_err().to_string();
        assert!(err.contains("scale 1") && err.contains("largest"), "{err}");
        let err = op.check_scales_fit_float16(&[1e-9]).unwrap_err().to_string();
        assert!(err.contains("scale 0") && err.contains("smallest normal"), "{err}");
    }
}
