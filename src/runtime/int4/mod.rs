//! gptc's own 4-bit matmul for tract, for `MatMulNBits` at accuracy level 4: what ONNX Runtime
//! computes there (activations quantized to int8 per block of 32, integer dot products against
//! the 4-bit codes, one float multiply a block), where tract's Q4_0 path unpacks every weight to
//! float32 at every step (BENCHMARKS.md, "4-bit weights", has both measured).
//!
//! `parse` reads and checks `MatMulNBits` nodes and hands those it takes to `op`, the tract op;
//! `weights` lays a matrix out for the kernels; `schedule` shares a matmul with the crew;
//! `kernels` holds the panel products (plain Rust, AVX2, AVX-512 VNNI); `rewrite` stacks the
//! matmuls that read one input.
//!
//! The work is shared with gptc's crew of helper threads (`crew.rs`: tract's pool costs more to
//! wake than the second core gives on a decode step's matrices) in chunks of panels of 16
//! weight rows, each panel passed over every activation row (a decode step has one, a prompt
//! many; up to eight a pass, so a panel's codes are unpacked once for eight rows). A kernel
//! lane holds one weight row: AVX-512 VNNI's `vpdpbusd` multiplies four codes of sixteen rows
//! by four activations at once; AVX2 does it for eight rows in two steps. The fastest the CPU
//! runs is chosen at run time, else plain Rust computes the same integers.
//!
//! A block of activations holding NaN or an infinity has no int8 form: its scale is NaN, so every
//! output the row reaches is NaN on every path, as float32 compute (level 0) gives, and the
//! driver reports the non-finite logits either way.

mod kernels;
mod op;
mod parse;
mod rewrite;
mod schedule;
mod weights;

pub use op::Int4MatMul;
pub use parse::onnx;
pub use rewrite::stack_siblings;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::kernels::*;
    use super::onnx;
    use super::op::Int4MatMul;
    use super::weights::*;
    use crate::runtime::addends::Addends;
    use crate::runtime::crew::Crew;
    use gptc_graph::onnx::{self as proto, DataType};
    use gptc_graph::quant::{Int4Matrix, BLOB, BLOCK};
    use tract_onnx::prelude::*;

    fn matrix(k: usize, n: usize, salt: usize) -> (Vec<f32>, Int4Matrix) {
        let w: Vec<f32> =
            (0..k * n).map(|i| (((i * 7919 + salt) % 1009) as f32 - 504.0) / 5000.0).collect();
        let q = Int4Matrix::quantize("w", &w, k, n, false).unwrap();
        (q.dequantize(false), q)
    }

    #[test]
    fn the_int8_kernel_is_the_dequantized_product_within_activation_rounding() {
        let (k, n) = (256, 40);
        let (w, q) = matrix(k, n, 3);
        let x: Vec<f32> = (0..k).map(|i| ((i * 31 % 97) as f32 - 48.0) / 17.0).collect();
        let mut y = vec![f32::NAN; n];
        Int4Weights::new(&q).matmul(&x, Addends::default(), &mut y).unwrap();
        let exact: Vec<f32> =
            (0..n).map(|j| (0..k).map(|i| x[i] * w[i * n + j]).sum::<f32>()).collect();
        let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = y.iter().zip(&exact).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        // int8 activations: about 1/254 of each block's largest value per element.
        assert!(err < 1e-2, "relative error {err}");
        assert!(err > 0.0, "activations were not quantized");
    }

    #[test]
    fn level_4_nodes_run_gptcs_kernel_level_0_nodes_tracts_own() {
        use gptc_graph::{build_model, file, GptConfig, GraphOptions, Quantization, RandomInit};
        let config = GptConfig {
            vocab_size: 64,
            context_length: 16,
            emb_dim: 64,
            n_heads: 2,
            n_layers: 2,
            drop_rate: 0.0,
            qkv_bias: false,
        };
        for (accuracy_level, ours) in [(4, 2 * 6 + 1), (0, 0)] {
            let quantization = Quantization::Int4 { accuracy_level };
            let options = GraphOptions { kv_cache: true, quantization, ..Default::default() };
            let model = build_model(&config, options, &mut RandomInit { seed: 2 }, None).unwrap();
            let runtime =
                crate::runtime::tract::TractRuntime::from_bytes(&file::encode(&model)).unwrap();
            let plan = runtime.backend().plan().model();
            let ops: Vec<&Int4MatMul> =
                plan.nodes().iter().filter_map(|n| n.op_as::<Int4MatMul>()).collect();
            let matrices: usize = ops.iter().map(|op| op.outputs.len()).sum();
            assert_eq!(matrices, ours, "level {accuracy_level}");
            // q, k and v of each layer: one op.
            let stacked = ops.iter().filter(|op| op.outputs.len() == 3).count();
            assert_eq!(stacked, if ours > 0 { 2 } else { 0 }, "level {accuracy_level}");
            // The attention output and the MLP's out join the residual stream as they write.
            let joined = ops.iter().filter(|op| op.epilogue.residual).count();
            assert_eq!(joined, if ours > 0 { 2 * 2 } else { 0 }, "level {accuracy_level}");
        }
    }

    #[test]
    fn stacked_matrices_give_each_matrixs_own_product() {
        let (k, m) = (96, 3);
        let parts: Vec<Arc<Int4Weights>> =
            [16, 48, 32].iter().map(|&n| Arc::new(Int4Weights::new(&matrix(k, n, n).1))).collect();
        let stacked = Int4Weights::stack(&parts).unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.61).cos()).collect();
        let mut all = vec![f32::NAN; m * stacked.n];
        stacked.matmul(&x, Addends::default(), &mut all).unwrap();
        let mut first = 0;
        for part in &parts {
            let mut own = vec![f32::NAN; m * part.n];
            part.matmul(&x, Addends::default(), &mut own).unwrap();
            for (row, own) in all.chunks_exact(stacked.n).zip(own.chunks_exact(part.n)) {
                assert_eq!(&row[first..first + part.n], own);
            }
            first += part.n;
        }
        let odd = Arc::new(Int4Weights::new(&matrix(k, 20, 1).1));
        assert!(Int4Weights::stack(&[parts[0].clone(), odd]).is_none(), "20 rows: a partial panel");
    }

    #[test]
    fn avx2_and_plain_rust_quantize_activations_alike() {
        if !has_avx2() {
            return;
        }
        let mut values = [0f32; BLOCK];
        for seed in 0..2000u32 {
            for (i, v) in values.iter_mut().enumerate() {
                let t = (seed * 31 + i as u32 * 7919) % 2003;
                // Halves and exact ties included: codes land on .5 for some blocks.
                *v = (t as f32 - 1001.0) / if seed % 3 == 0 { 8.0 } else { 997.0 };
            }
            if seed % 7 == 0 {
                values.fill(0.0);
            }
            // SAFETY: checked above.
            assert_eq!(unsafe { to_int8_avx2(&values) }, to_int8(&values), "seed {seed}");
        }
    }

    #[test]
    fn a_block_that_is_not_finite_quantizes_to_a_nan_scale_on_every_path() {
        let mut quantizers: Vec<(&str, ToInt8)> = vec![("plain", to_int8)];
        if has_avx2() {
            // SAFETY: checked just above.
            quantizers.push(("avx2", |values| unsafe { to_int8_avx2(values) }));
        }
        for (name, quantize) in quantizers {
            for odd in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for at in [0, 13, 31] {
                    let mut values: [f32; BLOCK] =
                        std::array::from_fn(|i| (i as f32 * 0.7).sin() * 2.0);
                    values[at] = odd;
                    let (codes, scale) = quantize(&values);
                    assert!(scale.is_nan(), "{name}: {odd} at {at} gave scale {scale}");
                    assert_eq!(codes, [0; BLOCK], "{name}: {odd} at {at}");
                }
            }
        }
    }

    #[test]
    fn non_finite_activations_make_their_rows_outputs_nan_on_every_kernel() {
        // A decode batch of 3 rows and a prompt of 40: one row holds a NaN, another an infinity.
        for m in [3, 40] {
            let (k, n) = (96, 10);
            let weights = Int4Weights::new(&matrix(k, n, 7).1);
            let mut x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            x[k + 40] = f32::NAN;
            x[(m - 1) * k + 3] = f32::NEG_INFINITY;
            for (name, kernel) in kernels() {
                for crew in [Crew::new(0), Crew::new(1)] {
                    let mut y = vec![f32::NAN; m * n];
                    weights.matmul_on(&crew, kernel, &x, Addends::default(), &mut y).unwrap();
                    for (r, row) in y.chunks_exact(n).enumerate() {
                        let odd = r == 1 || r == m - 1;
                        assert!(
                            row.iter().all(|v| v.is_nan() == odd && (odd || v.is_finite())),
                            "{name}, {m} rows: row {r} {row:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn an_empty_matrix_is_an_error_not_a_division_by_zero() {
        let empty = Int4Matrix::from_stored(&[4, 0, BLOB], vec![], vec![]).unwrap();
        let err =
            Int4Weights::new(&empty).matmul(&[], Addends::default(), &mut [0.0; 4]).unwrap_err();
        assert!(err.to_string().contains("[0, 4]"), "{err}");
    }

    /// One `MatMulNBits` node on a graph input `a` of `a_dims` (K 64, N 8, bits 4, blocks of
    /// `block_size`, every scale `scale`), with `level`, as a file's bytes.
    fn single_matmul_nbits(a_dims: &[i64], level: i64, block_size: i64, scale: f32) -> Vec<u8> {
        let blocks = 64 / block_size;
        use gptc_graph::onnx::{
            AttributeProto, AttributeType, Dim, GraphProto, ModelProto, OperatorSetIdProto,
            TensorProto, ValueInfoProto,
        };
        let int = |name: &str, i: i64| AttributeProto {
            name: name.into(),
            r#type: AttributeType::Int as i32,
            i,
            ..Default::default()
        };
        let dims: Vec<Dim> = a_dims.iter().map(|&d| Dim::Fixed(d)).collect();
        let graph = GraphProto {
            node: vec![proto::NodeProto {
                input: vec!["a".into(), "b".into(), "s".into()],
                output: vec!["y".into()],
                name: "the_matmul".into(),
                op_type: "MatMulNBits".into(),
                domain: gptc_graph::names::MICROSOFT_DOMAIN.into(),
                attribute: vec![
                    int("K", 64),
                    int("N", 8),
                    int("bits", 4),
                    int("block_size", block_size),
                    int("accuracy_level", level),
                ],
                ..Default::default()
            }],
            initializer: vec![
                TensorProto {
                    name: "b".into(),
                    dims: vec![8, blocks, block_size / 2],
                    data_type: DataType::Uint8 as i32,
                    raw_data: vec![0x99; 8 * 32],
                    ..Default::default()
                },
                TensorProto {
                    name: "s".into(),
                    dims: vec![8 * blocks],
                    data_type: DataType::Float as i32,
                    float_data: vec![scale; 8 * blocks as usize],
                    ..Default::default()
                },
            ],
            input: vec![ValueInfoProto::tensor("a", DataType::Float, &dims)],
            output: vec![ValueInfoProto::tensor("y", DataType::Float, &[])],
            ..Default::default()
        };
        let opset = |domain: &str, version| OperatorSetIdProto { domain: domain.into(), version };
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![opset("", 17), opset(gptc_graph::names::MICROSOFT_DOMAIN, 1)],
            graph: Some(graph),
            ..Default::default()
        };
        gptc_graph::file::encode(&model)
    }

    #[test]
    fn a_rank_0_activation_is_refused_while_typing_at_every_level() {
        let typed = |bytes: &[u8]| {
            onnx().with_ignore_value_info(false).model_for_read(&mut &bytes[..])?.into_typed()
        };
        for level in [0, 4] {
            assert!(typed(&single_matmul_nbits(&[3, 64], level, 32, 0.5)).is_ok(), "{level}");
            // Before the check, `rank - 1` wrapped and the shape rules grew without end.
            let err = typed(&single_matmul_nbits(&[], level, 32, 0.5)).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains("`the_matmul`") && err.contains("rank 0"), "{err}");
            let short = single_matmul_nbits(&[3, 32], level, 32, 0.5);
            let err = format!("{:#}", typed(&short).unwrap_err());
            assert!(err.contains("32 values in its last dim, K is 64"), "{err}");
        }
    }

    #[test]
    fn scales_beyond_float16_are_refused_only_where_tract_holds_them_in_float16() {
        let run = |bytes: &[u8]| -> TractResult<Vec<f32>> {
            let model = onnx().model_for_read(&mut &bytes[..])?.into_typed()?.into_runnable()?;
            let a = Tensor::from_shape(&[1, 64], &[1f32; 64])?;
            let y = model.run(tvec![a.into_tvalue()])?;
            Ok(y[0].to_plain_array_view::<f32>()?.iter().copied().collect())
        };
        // Blocks of 32: gptc's kernel (level 4) and tract's Q4_0 (level 0) keep float16 scales.
        for level in [0, 4] {
            let err = run(&single_matmul_nbits(&[1, 64], level, 32, 1e6)).unwrap_err();
            assert!(format!("{err:#}").contains("float16"), "{err:#}");
        }
        // Blocks of 64 at 4 bits: tract dequantizes in float32, the scale is kept exactly
        // (code 9 is 1 above the zero point 8: every output is 64 scales).
        let y = run(&single_matmul_nbits(&[1, 64], 0, 64, 1e6)).unwrap();
        assert!(y.iter().all(|&v| v == 64e6), "{y:?}");
    }

    #[test]
    fn every_kernel_and_crew_computes_the_same_as_plain_rust_on_one_thread() {
        // Odd block counts (a zero block pads the pair), rows not a multiple of four, one row,
        // a few (a batch), a prompt's many (blocks of 16 and a rest) and none, split over threads.
        let shapes = [(32, 5, 1), (96, 7, 3), (768, 131, 1), (3072, 64, 2), (64, 4099, 1)];
        let prompts = [(96, 37, 4), (96, 130, 40), (64, 7, 33), (64, 8, 0), (3072, 70, 21)];
        for (k, n, m) in shapes.into_iter().chain(prompts) {
            let (w, q) = matrix(k, n, k + n);
            let weights = Int4Weights::new(&q);
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            // The kernels sum the same integers a block, the blocks' products in their own
            // orders: outputs agree within rounding of the sum of the products' magnitudes.
            let magnitude = |at: usize| {
                let (row, j) = (at / n, at % n);
                (0..k).map(|i| (x[row * k + i] * w[i * n + j]).abs()).sum::<f32>()
            };
            let close = |a: f32, b: f32, at: usize| (a - b).abs() <= 1e-6 * magnitude(at).max(1.0);
            let mut plain = vec![f32::NAN; m * n];
            weights
                .matmul_on(&Crew::new(0), panel_plain, &x, Addends::default(), &mut plain)
                .unwrap();
            // The fast kernels with a bias and a residual added as they write.
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 1.0).collect();
            let residual: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.13).sin()).collect();
            let adds = Addends { bias: Some(&bias), residual: Some(&residual) };
            for (name, kernel) in kernels() {
                let mut fast = vec![f32::NAN; m * n];
                weights.matmul_on(&Crew::new(1), kernel, &x, adds, &mut fast).unwrap();
                for (at, (f, p)) in fast.iter().zip(&plain).enumerate() {
                    let p = p + bias[at % n] + residual[at];
                    assert!(close(*f, p, at), "{name} {k}x{n}x{m}: {f} vs {p}");
                }
            }
            for (r, row) in x.chunks_exact(k).enumerate() {
                let mut alone = vec![f32::NAN; n];
                weights.matmul(row, Addends::default(), &mut alone).unwrap();
                for (j, (a, e)) in alone.iter().zip(&plain[r * n..][..n]).enumerate() {
                    assert!(close(*a, *e, r * n + j), "{k}x{n}x{m}: {a} vs {e}");
                }
            }
        }
    }
}
