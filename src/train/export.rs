//! ONNX export: burn-onnx captures the network's forward pass (dynamic batch axis); the ModelProto is
//! then edited to give the graph faceflow's stable tensor names and to carry the model spec.

use burn::tensor::{Device, Tensor, TensorData};
use burn_onnx::export::{AxisSpec, InputSpec, OnnxExporter};
use onnx_ir::Message;

use crate::model::spec::{
    AGE_OUTPUT, GENDER_OUTPUT, INPUT_NAME, METADATA_KEY, ModelSpec, RACE_OUTPUT,
};

use super::TrainError;
use super::net::FaceAttrNet;

/// Exports `model` (on a non-autodiff device, in eval mode) to ONNX bytes carrying `spec`.
pub fn export_onnx(model: &FaceAttrNet, spec: &ModelSpec) -> Result<Vec<u8>, TrainError> {
    let device = Device::flex();
    let side = spec.input_px();
    // Two batch sizes so the exporter can tell the batch axis is dynamic.
    let sample = Tensor::<4>::zeros([2, 3, side, side], &device);
    let validation = Tensor::<4>::zeros([3, 3, side, side], &device);
    let specs = [InputSpec::new([
        AxisSpec::dynamic("batch"),
        AxisSpec::Static,
        AxisSpec::Static,
        AxisSpec::Static,
    ])];
    let onnx = OnnxExporter::new()
        .export_dynamic(model, sample, validation, &specs, |m, x| m.forward(x))
        .map_err(|e| TrainError::Export(e.to_string()))?;
    rename_and_annotate(onnx.as_bytes(), spec)
}

fn rename_and_annotate(bytes: &[u8], spec: &ModelSpec) -> Result<Vec<u8>, TrainError> {
    let mut proto = onnx_ir::ModelProto::parse_from_bytes(bytes)
        .map_err(|e| TrainError::Export(format!("exported model does not parse: {e}")))?;
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| TrainError::Export("exported model has no graph".into()))?;
    if graph.input.len() != 1 || graph.output.len() != 3 {
        return Err(TrainError::Export(format!(
            "expected 1 input and 3 outputs, the export has {} and {}",
            graph.input.len(),
            graph.output.len()
        )));
    }
    let mut renames = vec![(graph.input[0].name.clone(), INPUT_NAME.to_string())];
    for (value, name) in graph
        .output
        .iter()
        .zip([AGE_OUTPUT, GENDER_OUTPUT, RACE_OUTPUT])
    {
        renames.push((value.name.clone(), name.to_string()));
    }
    let rename = |name: &mut String| {
        if let Some((_, new)) = renames.iter().find(|(old, _)| old == name) {
            *name = new.clone();
        }
    };
    for value in graph.input.iter_mut().chain(graph.output.iter_mut()) {
        rename(&mut value.name);
    }
    for value in graph.value_info.iter_mut() {
        rename(&mut value.name);
    }
    for node in graph.node.iter_mut() {
        node.input.iter_mut().for_each(rename);
        node.output.iter_mut().for_each(rename);
    }
    proto.producer_name = "faceflow".into();
    proto.producer_version = env!("CARGO_PKG_VERSION").into();
    proto.metadata_props.retain(|p| p.key != METADATA_KEY);
    proto.metadata_props.push(Default::default());
    if let Some(entry) = proto.metadata_props.last_mut() {
        entry.key = METADATA_KEY.into();
        entry.value = spec.to_json();
    }
    proto
        .write_to_bytes()
        .map_err(|e| TrainError::Export(format!("cannot serialise the model: {e}")))
}

/// Runs the burn network on normalised planar crops (`batch × 3 × side²`) and returns the three
/// logit arrays flattened row-major, for comparing against ONNX Runtime.
pub fn burn_logits(
    model: &FaceAttrNet,
    input: Vec<f32>,
    batch: usize,
) -> Result<[Vec<f32>; 3], TrainError> {
    let device = Device::flex();
    let side = ((input.len() / batch.max(1) / 3) as f64).sqrt().round() as usize;
    let x = Tensor::<4>::from_data(TensorData::new(input, [batch, 3, side, side]), &device);
    let (a, g, r) = model.forward(x);
    let read = |t: Tensor<2>| {
        t.into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Export(format!("{e:?}")))
    };
    Ok([read(a)?, read(g)?, read(r)?])
}
