//! A small typed ONNX graph builder: ops take value handles and return value handles; scopes give
//! every node and parameter a dotted name that follows the module tree (`h.3.attn.q_proj.weight`).

use std::collections::{HashMap, HashSet};

use crate::onnx::{
    AttributeProto, AttributeType, DataType, Dim, GraphProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use crate::weights::{Init, WeightSource};
use crate::Result;

/// A handle to a value in the graph under construction: cheap to copy, never a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value(usize);

/// One ONNX attribute, typed.
#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(&'static str),
}

impl Attr {
    fn into_proto(self, name: &str) -> AttributeProto {
        let mut a = AttributeProto { name: name.to_string(), ..Default::default() };
        match self {
            Attr::Int(i) => (a.r#type, a.i) = (AttributeType::Int as i32, i),
            Attr::Float(f) => (a.r#type, a.f) = (AttributeType::Float as i32, f),
            Attr::Ints(v) => (a.r#type, a.ints) = (AttributeType::Ints as i32, v),
            Attr::Str(s) => (a.r#type, a.s) = (AttributeType::String as i32, s.as_bytes().to_vec()),
        }
        a
    }
}

/// Constant data small enough to live beside the graph's logic (shapes, axes, scalars).
#[derive(Clone, Debug, PartialEq)]
enum ConstData {
    I64(Vec<i64>),
    F32(Vec<f32>),
    /// IEEE half bit patterns.
    F16(Vec<u16>),
}

/// Float32, or float16 for GPU runtimes: in float16, LayerNorm and softmax still compute in
/// float32 (a variance or a sum of exponentials overflows half precision long before the values
/// themselves do), and the logits are widened back to float32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    pub fn data_type(self) -> DataType {
        match self {
            Precision::F32 => DataType::Float,
            Precision::F16 => DataType::Float16,
        }
    }

    pub fn of_data_type(dtype: DataType) -> Option<Precision> {
        match dtype {
            DataType::Float => Some(Precision::F32),
            DataType::Float16 => Some(Precision::F16),
            _ => None,
        }
    }

    /// Bytes per weight.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}

/// How the weights of matrix products are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// In the graph's float type, multiplied by `MatMul`.
    #[default]
    None,
    /// 4 bits per weight in ONNX Runtime's `com.microsoft.MatMulNBits` (see [`crate::quant`]);
    /// `accuracy_level` is the op's: 0 computes in float32, 4 lets ONNX Runtime quantize the
    /// activations to int8.
    Int4 { accuracy_level: u8 },
}

pub struct GraphBuilder<'w> {
    weights: &'w mut dyn WeightSource,
    float: Precision,
    quantization: Quantization,
    /// Operator domains used besides the default one.
    domains: std::collections::BTreeSet<&'static str>,
    value_names: Vec<String>,
    taken: HashSet<String>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    params: HashMap<String, Value>,
    consts: Vec<(ConstData, Vec<i64>, Value)>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
}

impl<'w> GraphBuilder<'w> {
    /// A builder whose parameters take their values from `weights` and whose weights and
    /// activations are of type `float`.
    pub fn new(
        weights: &'w mut dyn WeightSource,
        float: Precision,
        quantization: Quantization,
    ) -> GraphBuilder<'w> {
        GraphBuilder {
            weights,
            float,
            quantization,
            domains: Default::default(),
            value_names: Vec::new(),
            taken: HashSet::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            params: HashMap::new(),
            consts: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
        }
    }

    /// The root scope: names start at the top of the module tree.
    pub fn root(&mut self) -> Scope<'_, 'w> {
        Scope { graph: self, prefix: String::new() }
    }

    pub fn input(&mut self, name: &str, elem_type: DataType, dims: &[Dim]) -> Value {
        let value = self.new_value(name.to_string());
        self.inputs.push(ValueInfoProto::tensor(&self.value_names[value.0], elem_type, dims));
        value
    }

    /// Declares `value` a graph output under `name`, renaming the value so no Identity is needed.
    pub fn output(&mut self, value: Value, name: &str, elem_type: DataType, dims: &[Dim]) {
        let old = std::mem::replace(&mut self.value_names[value.0], name.to_string());
        self.taken.insert(name.to_string());
        for node in &mut self.nodes {
            for slot in node.input.iter_mut().chain(node.output.iter_mut()) {
                if *slot == old {
                    *slot = name.to_string();
                }
            }
        }
        self.outputs.push(ValueInfoProto::tensor(name, elem_type, dims));
    }

    /// The operator domains the graph uses besides the default one.
    pub fn domains(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.domains.iter().copied()
    }

    pub fn finish(self, name: &str) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.to_string(),
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        }
    }

    fn unique_name(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut n = 1;
        while self.taken.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        self.taken.insert(name.clone());
        name
    }

    fn new_value(&mut self, base: String) -> Value {
        let name = self.unique_name(base);
        self.value_names.push(name);
        Value(self.value_names.len() - 1)
    }

    fn constant(&mut self, data: ConstData, dims: Vec<i64>) -> Value {
        if let Some((_, _, v)) = self.consts.iter().find(|(d, s, _)| *d == data && *s == dims) {
            return *v;
        }
        let value = self.new_value(format!("const.{}", self.consts.len()));
        let name = self.value_names[value.0].clone();
        let tensor = match &data {
            ConstData::I64(v) => TensorProto {
                name,
                dims: dims.clone(),
                data_type: DataType::Int64 as i32,
                int64_data: v.clone(),
                ..Default::default()
            },
            ConstData::F32(v) => TensorProto {
                name,
                dims: dims.clone(),
                data_type: DataType::Float as i32,
                float_data: v.clone(),
                ..Default::default()
            },
            ConstData::F16(v) => TensorProto {
                name,
                dims: dims.clone(),
                data_type: DataType::Float16 as i32,
                raw_data: v.iter().flat_map(|h| h.to_le_bytes()).collect(),
                ..Default::default()
            },
        };
        self.initializers.push(tensor);
        self.consts.push((data, dims, value));
        value
    }
}

/// A place in the module tree; ops and parameters created through it are named under its prefix.
/// A `[n, k]` matrix stored as `MatMulNBits`' 4-bit weights: its blocks and scales.
#[derive(Clone, Copy, Debug)]
pub struct Int4Table {
    blocks: Value,
    scales: Value,
    k: usize,
    n: usize,
}

pub struct Scope<'g, 'w> {
    graph: &'g mut GraphBuilder<'w>,
    prefix: String,
}

impl<'w> Scope<'_, 'w> {
    /// A child scope, as `vb.pp("attn")` in candle: `h.3` -> `h.3.attn`.
    pub fn pp(&mut self, name: impl std::fmt::Display) -> Scope<'_, 'w> {
        Scope { prefix: self.qualify(&name.to_string()), graph: self.graph }
    }

    fn qualify(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The element type of the graph's weights and activations.
    pub fn float_type(&self) -> DataType {
        self.graph.float.data_type()
    }

    /// A trained or initialized tensor named under this scope, from the builder's weights, in
    /// the graph's float type.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Value> {
        let float = self.graph.float;
        self.param_of_type(name, shape, init, float)
    }

    /// A parameter kept in float32 whatever the graph's type (for ops computed in float32).
    pub fn param_f32(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Value> {
        self.param_of_type(name, shape, init, Precision::F32)
    }

    fn param_of_type(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
        precision: Precision,
    ) -> Result<Value> {
        let full = self.qualify(name);
        if let Some(v) = self.graph.params.get(&full) {
            return Ok(*v);
        }
        let data = self.graph.weights.tensor(&full, shape, init)?;
        let mut tensor = TensorProto {
            name: full.clone(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: precision.data_type() as i32,
            ..Default::default()
        };
        match precision {
            // Moved, not copied: packed `float_data` is the same little-endian bytes as `raw_data`.
            Precision::F32 => tensor.float_data = data,
            Precision::F16 => {
                tensor.raw_data =
                    data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()
            }
        }
        let value = self.graph.new_value(full.clone());
        self.graph.initializers.push(tensor);
        self.graph.params.insert(full, value);
        Ok(value)
    }

    /// A named boolean table stored in the file (not a parameter: no weight source is asked).
    pub fn const_bool(&mut self, name: &str, shape: &[usize], values: &[bool]) -> Value {
        let full = self.qualify(name);
        let value = self.graph.new_value(full.clone());
        self.graph.initializers.push(TensorProto {
            name: full,
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Bool as i32,
            raw_data: values.iter().map(|&b| b as u8).collect(),
            ..Default::default()
        });
        value
    }

    pub fn const_i64(&mut self, values: &[i64]) -> Value {
        self.graph.constant(ConstData::I64(values.to_vec()), vec![values.len() as i64])
    }

    pub fn scalar_i64(&mut self, value: i64) -> Value {
        self.graph.constant(ConstData::I64(vec![value]), vec![])
    }

    /// A float32 vector constant (RoPE's frequencies).
    pub fn const_f32(&mut self, values: &[f32]) -> Value {
        self.graph.constant(ConstData::F32(values.to_vec()), vec![values.len() as i64])
    }

    pub fn scalar_f32(&mut self, value: f32) -> Value {
        self.graph.constant(ConstData::F32(vec![value]), vec![])
    }

    /// A scalar in the graph's float type.
    pub fn scalar(&mut self, value: f32) -> Value {
        match self.graph.float {
            Precision::F16 => self
                .graph
                .constant(ConstData::F16(vec![half::f16::from_f32(value).to_bits()]), vec![]),
            Precision::F32 => self.scalar_f32(value),
        }
    }

    /// `x` (of the graph's float type) in float32: a Cast only where the types differ.
    pub fn to_f32(&mut self, x: Value) -> Value {
        if self.graph.float == Precision::F32 {
            x
        } else {
            self.cast(x, DataType::Float)
        }
    }

    /// `x` (float32) in the graph's float type: a Cast only where the types differ.
    pub fn from_f32(&mut self, x: Value) -> Value {
        if self.graph.float == Precision::F32 {
            x
        } else {
            let float = self.graph.float.data_type();
            self.cast(x, float)
        }
    }

    /// Adds one node with a single output, named after the scope and the op.
    pub fn op(&mut self, op_type: &str, inputs: &[Value], attrs: Vec<(&str, Attr)>) -> Value {
        let output = self.graph.new_value(self.qualify(op_type));
        let name = self.graph.value_names[output.0].clone();
        self.graph.nodes.push(NodeProto {
            input: inputs.iter().map(|v| self.graph.value_names[v.0].clone()).collect(),
            output: vec![name.clone()],
            name,
            op_type: op_type.to_string(),
            attribute: attrs.into_iter().map(|(n, a)| a.into_proto(n)).collect(),
            ..Default::default()
        });
        output
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.op("Add", &[a, b], vec![])
    }

    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.op("Sub", &[a, b], vec![])
    }

    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.op("Mul", &[a, b], vec![])
    }

    pub fn and(&mut self, a: Value, b: Value) -> Value {
        self.op("And", &[a, b], vec![])
    }

    pub fn cast(&mut self, x: Value, to: DataType) -> Value {
        self.op("Cast", &[x], vec![("to", Attr::Int(to as i64))])
    }

    pub fn concat(&mut self, parts: &[Value], axis: i64) -> Value {
        self.op("Concat", parts, vec![("axis", Attr::Int(axis))])
    }

    /// `x[start..end]` along each of `axes`, with constant bounds (negative counts from the end).
    pub fn slice(&mut self, x: Value, starts: &[i64], ends: &[i64], axes: &[i64]) -> Value {
        let starts = self.const_i64(starts);
        let ends = self.const_i64(ends);
        let axes = self.const_i64(axes);
        self.op("Slice", &[x, starts, ends, axes], vec![])
    }

    pub fn tanh(&mut self, x: Value) -> Value {
        self.op("Tanh", &[x], vec![])
    }

    pub fn matmul(&mut self, a: Value, b: Value) -> Value {
        self.op("MatMul", &[a, b], vec![])
    }

    /// `x @ W` for the parameter `name`, `W` of `k` inputs and `n` outputs, stored as the
    /// builder's quantization says: `[k, n]` in the float type for `MatMul`, or 4-bit blocks for
    /// `MatMulNBits`. With `rows_are_outputs` the source's tensor is `[n, k]` (an embedding
    /// table used as the output head) and the float form multiplies by its transpose.
    pub fn matmul_param(
        &mut self,
        x: Value,
        name: &str,
        k: usize,
        n: usize,
        init: Init,
        rows_are_outputs: bool,
    ) -> Result<Value> {
        let shape = if rows_are_outputs { [n, k] } else { [k, n] };
        let Quantization::Int4 { accuracy_level } = self.graph.quantization else {
            let w = self.param(name, &shape, init)?;
            let w = if rows_are_outputs { self.transpose(w, &[1, 0]) } else { w };
            return Ok(self.matmul(x, w));
        };
        let full = self.qualify(name);
        let values = self.graph.weights.tensor(&full, &shape, init)?;
        self.matmul_int4(x, &full, &values, [k, n], rows_are_outputs, accuracy_level)
    }

    /// As [`Scope::matmul_param`] with `rows_are_outputs`, for a table already in the graph
    /// (a head tied to the token embedding): with 4-bit weights, a quantized copy of it.
    pub fn matmul_by_table(&mut self, x: Value, table: Value, name: &str) -> Result<Value> {
        let Quantization::Int4 { accuracy_level } = self.graph.quantization else {
            let t = self.transpose(table, &[1, 0]);
            return Ok(self.matmul(x, t));
        };
        let table_name = &self.graph.value_names[table.0];
        let tensor = self.graph.initializers.iter().find(|t| &t.name == table_name);
        let Some(tensor) = tensor.filter(|t| t.dims.len() == 2 && !t.float_data.is_empty()) else {
            return Err(crate::Error::Config(format!(
                "`{table_name}` is not a float32 table that 4-bit weights can be made from"
            )));
        };
        let (n, k) = (tensor.dims[0] as usize, tensor.dims[1] as usize);
        let values = tensor.float_data.clone();
        let full = self.qualify(name);
        self.matmul_int4(x, &full, &values, [k, n], true, accuracy_level)
    }

    fn matmul_int4(
        &mut self,
        x: Value,
        full: &str,
        values: &[f32],
        [k, n]: [usize; 2],
        rows_are_outputs: bool,
        accuracy_level: u8,
    ) -> Result<Value> {
        let table = self.int4_table(full, values, [k, n], rows_are_outputs)?;
        Ok(self.matmul_by_int4_table(x, &table, accuracy_level))
    }

    /// Stores `values` (`[k, n]`, or `[n, k]` with `rows_are_outputs`) as `MatMulNBits`' weights
    /// `{full}_q4` (`[n, k / 32, 16]`) and `{full}_scales` (`[n * k / 32]`).
    fn int4_table(
        &mut self,
        full: &str,
        values: &[f32],
        [k, n]: [usize; 2],
        rows_are_outputs: bool,
    ) -> Result<Int4Table> {
        if !k.is_multiple_of(crate::quant::BLOCK) {
            return Err(crate::Error::Config(format!(
                "`{full}` has {k} inputs: 4-bit weights need a multiple of {} (emb_dim and 4 * emb_dim)",
                crate::quant::BLOCK
            )));
        }
        let q = crate::quant::Int4Matrix::quantize(full, values, k, n, rows_are_outputs)?;
        let blocks_name = format!("{full}{}", crate::names::INT4_BLOCKS_SUFFIX);
        let blocks = self.graph.new_value(blocks_name.clone());
        let per_row = (k / crate::quant::BLOCK) as i64;
        self.graph.initializers.push(TensorProto {
            name: self.graph.value_names[blocks.0].clone(),
            dims: vec![n as i64, per_row, crate::quant::BLOB as i64],
            data_type: DataType::Uint8 as i32,
            raw_data: q.blocks,
            ..Default::default()
        });
        let scales = self.graph.new_value(format!("{full}{}", crate::names::INT4_SCALES_SUFFIX));
        self.graph.initializers.push(TensorProto {
            name: self.graph.value_names[scales.0].clone(),
            dims: vec![n as i64 * per_row],
            data_type: DataType::Float as i32,
            float_data: q.scales,
            ..Default::default()
        });
        self.graph.domains.insert(crate::names::MICROSOFT_DOMAIN);
        Ok(Int4Table { blocks, scales, k, n })
    }

    /// `x @ W^T` for the 4-bit `[n, k]` table: `MatMulNBits`.
    fn matmul_by_int4_table(&mut self, x: Value, table: &Int4Table, accuracy_level: u8) -> Value {
        let attrs = vec![
            ("K", Attr::Int(table.k as i64)),
            ("N", Attr::Int(table.n as i64)),
            ("bits", Attr::Int(4)),
            ("block_size", Attr::Int(crate::quant::BLOCK as i64)),
            ("accuracy_level", Attr::Int(accuracy_level as i64)),
        ];
        self.microsoft_op("MatMulNBits", &[x, table.blocks, table.scales], attrs)
    }

    fn microsoft_op(&mut self, op: &str, inputs: &[Value], attrs: Vec<(&str, Attr)>) -> Value {
        let y = self.op(op, inputs, attrs);
        if let Some(node) = self.graph.nodes.last_mut() {
            node.domain = crate::names::MICROSOFT_DOMAIN.to_string();
        }
        y
    }

    /// A token embedding `[vocab, emb]` that the output head is tied to, under 4-bit weights:
    /// stored once, as the head's `MatMulNBits` weights; [`Scope::lookup_int4`] reads its rows
    /// and [`Scope::head_by_int4_table`] multiplies by it. `None` without 4-bit weights.
    pub fn tied_int4_table(
        &mut self,
        name: &str,
        [vocab, emb]: [usize; 2],
        init: Init,
    ) -> Result<Option<(Int4Table, u8)>> {
        let Quantization::Int4 { accuracy_level } = self.graph.quantization else {
            return Ok(None);
        };
        let full = self.qualify(name);
        let values = self.graph.weights.tensor(&full, &[vocab, emb], init)?;
        let table = self.int4_table(&full, &values, [emb, vocab], true)?;
        Ok(Some((table, accuracy_level)))
    }

    /// The rows `ids` of a 4-bit table, dequantized (float32, `[.., k]`): ONNX Runtime's
    /// `GatherBlockQuantized` on the head's own blocks, `[n, k / 32, 16]` read as 4-bit codes
    /// along the last axis in one block of 32 each (zero point 8, as `MatMulNBits`), the scales
    /// seen as `[n, k / 32, 1]`; the `[.., k / 32, 32]` rows it gives are joined to `[.., k]`.
    pub fn lookup_int4(&mut self, table: &Int4Table, ids: Value) -> Value {
        let per_row = (table.k / crate::quant::BLOCK) as i64;
        let scales = self.reshape(table.scales, &[table.n as i64, per_row, 1]);
        let attrs = vec![
            ("bits", Attr::Int(4)),
            ("block_size", Attr::Int(crate::quant::BLOCK as i64)),
            ("gather_axis", Attr::Int(0)),
            ("quantize_axis", Attr::Int(2)),
        ];
        let rows = self.microsoft_op("GatherBlockQuantized", &[table.blocks, ids, scales], attrs);
        self.reshape(rows, &[0, 0, table.k as i64])
    }

    /// The head tied to a 4-bit table: `x @ table^T`.
    pub fn head_by_int4_table(&mut self, x: Value, table: &Int4Table, accuracy_level: u8) -> Value {
        self.matmul_by_int4_table(x, table, accuracy_level)
    }

    pub fn gather(&mut self, data: Value, indices: Value) -> Value {
        self.gather_axis(data, indices, 0)
    }

    pub fn gather_axis(&mut self, data: Value, indices: Value, axis: i64) -> Value {
        self.op("Gather", &[data, indices], vec![("axis", Attr::Int(axis))])
    }

    pub fn transpose(&mut self, x: Value, perm: &[i64]) -> Value {
        self.op("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))])
    }

    /// Reshape to a constant target; 0 copies the input's dim, as ONNX defines.
    pub fn reshape(&mut self, x: Value, shape: &[i64]) -> Value {
        let shape = self.const_i64(shape);
        self.op("Reshape", &[x, shape], vec![])
    }

    pub fn unsqueeze(&mut self, x: Value, axes: &[i64]) -> Value {
        let axes = self.const_i64(axes);
        self.op("Unsqueeze", &[x, axes], vec![])
    }

    pub fn squeeze(&mut self, x: Value, axes: &[i64]) -> Value {
        let axes = self.const_i64(axes);
        self.op("Squeeze", &[x, axes], vec![])
    }

    /// One dimension of `x`'s shape as an int64 scalar.
    pub fn dim(&mut self, x: Value, axis: i64) -> Value {
        let dims =
            self.op("Shape", &[x], vec![("start", Attr::Int(axis)), ("end", Attr::Int(axis + 1))]);
        self.squeeze(dims, &[0])
    }

    /// `[start, limit)` as int64, step 1.
    pub fn range(&mut self, start: Value, limit: Value) -> Value {
        let one = self.scalar_i64(1);
        self.op("Range", &[start, limit, one], vec![])
    }

    pub fn where_(&mut self, condition: Value, if_true: Value, if_false: Value) -> Value {
        self.op("Where", &[condition, if_true, if_false], vec![])
    }

    pub fn softmax_last_axis(&mut self, x: Value) -> Value {
        self.op("Softmax", &[x], vec![("axis", Attr::Int(-1))])
    }

    pub fn layer_normalization(&mut self, x: Value, scale: Value, shift: Value, eps: f32) -> Value {
        self.op(
            "LayerNormalization",
            &[x, scale, shift],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        )
    }
}
