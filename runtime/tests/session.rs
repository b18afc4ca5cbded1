//! The run-time contract of `Session`: deterministic, any arena alignment,
//! clear errors for a small arena or wrong buffers, and `load` leaving the
//! model empty on failure.

// Same reason as the crate: `Error` is large by design.
#![allow(clippy::result_large_err)]

use tinykd_runtime::{Bindings, Error, Model, Session};

fn seed(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/data/fuzz-seeds/{name}.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn inputs_for(model: &Model<'_>) -> Vec<Vec<f32>> {
    model
        .inputs()
        .map(|v| {
            (0..v.len())
                .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
                .collect()
        })
        .collect()
}

fn run(model: &Model<'_>, arena: &mut [u8], inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, Error> {
    let mut outputs: Vec<Vec<f32>> = model.outputs().map(|v| vec![f32::NAN; v.len()]).collect();
    let mut session = Session::new(model, arena)?;
    let ins: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(Vec::as_mut_slice).collect();
    session.run(&ins, &mut outs)?;
    Ok(outputs)
}

#[test]
fn runs_are_deterministic_and_alignment_independent() {
    for name in [
        "mlp",
        "cnn",
        "depthwise",
        "elementwise",
        "typed_fields",
        "constant_node",
    ] {
        let bytes = seed(name);
        let model = Model::parse(&bytes).unwrap();
        let inputs = inputs_for(&model);
        let mut buffer = vec![0u8; model.arena_size() + 64];
        let reference = run(&model, &mut buffer, &inputs).unwrap();
        assert!(
            reference.iter().flatten().all(|v| v.is_finite()),
            "{name}: output not written"
        );
        for skew in [0, 1, 3, 8, 15] {
            // A fresh, dirty arena at every offset: the result must not depend on either.
            buffer.fill(0xA5);
            let again = run(&model, &mut buffer[skew..], &inputs).unwrap();
            assert_eq!(
                again
                    .iter()
                    .flatten()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                reference
                    .iter()
                    .flatten()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
                "{name}: arena offset {skew}"
            );
        }
    }
}

#[test]
fn small_arena_and_wrong_buffers_are_errors() {
    let bytes = seed("cnn");
    let model = Model::parse(&bytes).unwrap();
    let mut small = vec![0u8; model.arena_size() / 2];
    assert!(matches!(
        Session::new(&model, &mut small),
        Err(Error::ArenaTooSmall { .. })
    ));

    let mut arena = vec![0u8; model.arena_size() + 16];
    let mut session = Session::new(&model, &mut arena).unwrap();
    let n_in = model.inputs().next().unwrap().len();
    let n_out = model.outputs().next().unwrap().len();
    let input = vec![0.0; n_in];
    let mut output = vec![0.0; n_out];
    assert!(matches!(
        session.run(&[], &mut [&mut output]),
        Err(Error::Arity { .. })
    ));
    let short = vec![0.0; n_in - 1];
    assert!(matches!(
        session.run(&[&short], &mut [&mut output]),
        Err(Error::BufferLength { index: 0, .. })
    ));
    let mut long = vec![0.0; n_out + 1];
    assert!(matches!(
        session.run(&[&input], &mut [&mut long]),
        Err(Error::BufferLength { what: "output", .. })
    ));
    session.run(&[&input], &mut [&mut output]).unwrap();
}

#[test]
fn failed_load_leaves_the_model_empty() {
    let bytes = seed("mlp");
    let mut model = Model::EMPTY;
    model.load(&bytes, &Bindings::default()).unwrap();
    assert!(!model.nodes().is_empty());
    let truncated = &bytes[..bytes.len() - 7];
    assert!(model.load(truncated, &Bindings::default()).is_err());
    assert!(model.nodes().is_empty() && model.values().is_empty() && model.arena_size() == 0);
}

#[test]
fn symbolic_batch_is_bound_at_load() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/demo/fashion_mlp.onnx"
    );
    let bytes = std::fs::read(path).unwrap();
    let single = Model::parse(&bytes).unwrap();
    assert_eq!(
        single
            .inputs()
            .next()
            .unwrap()
            .shape
            .iter()
            .collect::<Vec<_>>(),
        [1, 784]
    );
    let batched = Model::parse_with(
        &bytes,
        &Bindings {
            dims: &[("N", 3)],
            constants: &[],
        },
    )
    .unwrap();
    assert_eq!(
        batched
            .inputs()
            .next()
            .unwrap()
            .shape
            .iter()
            .collect::<Vec<_>>(),
        [3, 784]
    );
    assert_eq!(
        batched
            .outputs()
            .next()
            .unwrap()
            .shape
            .iter()
            .collect::<Vec<_>>(),
        [3, 10]
    );

    let inputs = inputs_for(&batched);
    let mut arena = vec![0u8; batched.arena_size() + 16];
    let all = run(&batched, &mut arena, &inputs).unwrap().remove(0);
    for row in 0..3 {
        let one = vec![inputs[0][row * 784..(row + 1) * 784].to_vec()];
        let mut arena = vec![0u8; single.arena_size() + 16];
        let out = run(&single, &mut arena, &one).unwrap().remove(0);
        assert_eq!(out, all[row * 10..(row + 1) * 10], "row {row}");
    }
}
