//! The models a server evaluates, compiled once at start-up from the shipped ONNX files.

use std::collections::BTreeMap;
use std::sync::Arc;

use cipherinfer_ckks::Parameters;
use cipherinfer_compiler::{HeModel, Shape, compile_model_auto};
use cipherinfer_model::{Manifest, plain};
use cipherinfer_protocol::AlgorithmId;
use cipherinfer_protocol::params::ExtendedParameters;
use cipherinfer_protocol::remote::ModelInfo;

/// One served model: the encrypted executor and what clients are told about it.
pub struct ServedModel {
    /// The executor (latency mode).
    pub model: HeModel,
    /// The public description (`describe_capabilities`).
    pub info: ModelInfo,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("name", &self.info.name)
            .finish_non_exhaustive()
    }
}

impl ServedModel {
    /// The CKKS parameters.
    pub fn params(&self) -> &Arc<Parameters> {
        self.model.parameters()
    }
}

/// The object name of input ciphertext `i` in a session.
pub fn input_object_name(i: usize) -> String {
    format!("input-{i}.ct")
}

/// The models, by name.
#[derive(Debug)]
pub struct Registry {
    models: BTreeMap<String, ServedModel>,
    default_model: String,
}

impl Registry {
    /// Compiles the named shipped models (the first is the default). Calibration for each
    /// model's output range uses the first 200 shipped samples of its dataset.
    pub fn shipped(names: &[String]) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let manifest = Manifest::shipped()?;
        let mut models = BTreeMap::new();
        for name in names {
            let entry = manifest.model(name)?.clone();
            let ir = cipherinfer_model::onnx::import(&manifest.read_model(name)?.bytes)?;
            if !ir.is_he_friendly() {
                return Err(format!(
                    "model {name} needs conversion (ReLU/MaxPool); serve an HE-friendly model"
                )
                .into());
            }
            let samples = manifest.load_samples(&entry.dataset)?;
            let calibration: Vec<Vec<f64>> = plain::sample_inputs(&samples, &entry.input)?
                .into_iter()
                .take(200)
                .map(|(t, _)| t.into_data())
                .collect();
            let (_, model) = compile_model_auto(&ir, &calibration)?;
            let spec = model.client_spec();
            let params = model.parameters().clone();
            let algorithm_id = AlgorithmId::for_ckks(&params)?;
            let mut parameters = ExtendedParameters::from_ckks(&params);
            parameters.max_multiplication_depth = Some(u32::try_from(model.depth())?);
            parameters.input_packing_format =
                Some(cipherinfer_protocol::params::PACKING_CHW_BLOCKS.to_string());
            parameters.batch_size = Some(u32::try_from(spec.batch_size)?);
            let (c, h, w) = spec.input_shape;
            let info = ModelInfo {
                name: name.clone(),
                description: entry.description.clone(),
                input_shape: vec![u32::try_from(c)?, u32::try_from(h)?, u32::try_from(w)?],
                output_shape: match spec.output_shape {
                    Shape::Chw(c, h, w) => vec![c, h, w],
                    Shape::Vector(n) => vec![n],
                }
                .into_iter()
                .map(u32::try_from)
                .collect::<Result<_, _>>()?,
                labels: entry.classes.clone(),
                algorithm_id,
                parameter_id: params.id_hex(),
                parameters,
                multiplicative_depth: u32::try_from(model.depth())?,
                rotation_steps: spec.rotation_steps.clone(),
                galois_elements: {
                    let mut g: Vec<u64> = spec
                        .rotation_steps
                        .iter()
                        .map(|&s| params.galois_element(s))
                        .collect();
                    g.sort_unstable();
                    g.dedup();
                    g
                },
                relinearization: spec.relinearization,
                input_objects: (0..spec.input.num_cts).map(input_object_name).collect(),
                client_spec: serde_json::to_value(&spec)?,
                preprocessing: Some(serde_json::to_value(&entry.input)?),
            };
            models.insert(name.clone(), ServedModel { model, info });
        }
        let default_model = names
            .first()
            .cloned()
            .ok_or("at least one model must be served")?;
        Ok(Self {
            models,
            default_model,
        })
    }

    /// A model by name.
    pub fn get(&self, name: &str) -> Option<&ServedModel> {
        self.models.get(name)
    }

    /// The default model's name.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// Every served model.
    pub fn all(&self) -> impl Iterator<Item = &ServedModel> {
        self.models.values()
    }
}
