//! tract running the exported graph agrees with the independent ndarray forward.

mod common;

use common::reference::Reference;
use common::{compile, relative_error, tiny_config, token_ids};
use gptc::runtime::tract::TractRuntime;
use gptc::runtime::{Runtime, Step};

const TOLERANCE: f32 = 1e-4;

#[test]
fn tiny_configs_match_the_reference_forward() {
    for (n_layers, qkv_bias) in [(2, false), (2, true), (4, false), (3, true)] {
        let config = tiny_config(n_layers, qkv_bias);
        let (bytes, weights) = compile(&config, 7 + n_layers as u64);
        let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
        let reference = Reference::new(&config, &weights);
        for (batch, seq) in [(1, 1), (1, 17), (3, 9), (3, config.context_length)] {
            let ids = token_ids(batch, seq, config.vocab_size, (batch * 100 + seq) as u64);
            let actual = tract.run(&Step::ids_only(&ids)).unwrap();
            let expected = reference.logits(&ids).unwrap();
            let err = relative_error(&actual, &expected);
            assert!(
                err < TOLERANCE,
                "layers {n_layers} qkv_bias {qkv_bias} batch {batch} seq {seq}: relative error {err}"
            );
        }
    }
}

/// The comparison above must be able to fail: one changed weight is caught.
#[test]
fn a_perturbed_weight_is_detected() {
    let config = tiny_config(2, true);
    let (bytes, mut weights) = compile(&config, 1);
    let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
    // (A key bias shifts every score of a query equally, which softmax ignores: perturb the MLP.)
    let tensor = weights.0.get_mut("h.1.mlp.c_fc.bias").unwrap();
    tensor.data[5] += 0.5;
    let ids = token_ids(1, 12, config.vocab_size, 3);
    let err = relative_error(
        &tract.run(&Step::ids_only(&ids)).unwrap(),
        &Reference::new(&config, &weights).logits(&ids).unwrap(),
    );
    assert!(err > 10.0 * TOLERANCE, "relative error {err}");
}

/// Rows of a batch are independent: each equals that row run alone.
#[test]
fn batch_rows_equal_single_runs() {
    let config = tiny_config(2, false);
    let (bytes, _) = compile(&config, 3);
    let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
    let ids = token_ids(3, 11, config.vocab_size, 9);
    let batched = tract.run(&Step::ids_only(&ids)).unwrap();
    for b in 0..3 {
        let row = ids.slice(ndarray::s![b..b + 1, ..]).to_owned();
        let single = tract.run(&Step::ids_only(&row)).unwrap();
        let from_batch = batched.slice(ndarray::s![b..b + 1, .., ..]).to_owned();
        assert!(relative_error(&from_batch, &single) < 1e-5, "row {b}");
    }
}

/// With tied weights the head is the token embedding: no `lm_head.weight` in the file, and the
/// reference (which falls back to `wte` then) agrees.
#[test]
fn tied_weights_use_the_token_embedding_as_head() {
    let config = tiny_config(2, true);
    let options = gptc_graph::GraphOptions {
        kv_cache: false,
        last_token_logits: false,
        tie_weights: true,
        ..Default::default()
    };
    let (bytes, weights) = common::compile_with(&config, options, 4);
    assert!(!weights.0.contains_key("lm_head.weight"));
    let mut tract = TractRuntime::from_bytes(&bytes).unwrap();
    let ids = token_ids(2, 7, config.vocab_size, 1);
    let err = relative_error(
        &tract.run(&Step::ids_only(&ids)).unwrap(),
        &Reference::new(&config, &weights).logits(&ids).unwrap(),
    );
    assert!(err < TOLERANCE, "relative error {err}");
    let stored: usize = weights.0.values().map(|t| t.data.len()).sum();
    assert_eq!(stored, gptc_graph::ParameterCount::of(&config).total_tied());
}
