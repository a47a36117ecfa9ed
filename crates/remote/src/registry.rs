//! The models a server evaluates, compiled once at start-up: shipped models by name, model
//! packages (a user's ONNX network with its `model.json` card) by directory, and compiled
//! models (`cipherinfer compile` artifacts) by file. A package's network with ReLU-like
//! activations or MaxPool is converted to polynomials over the ranges its calibration images
//! reach; an artifact holds the converted network and its parameters already.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cipherinfer_ckks::Parameters;
use cipherinfer_compiler::degree::{
    DEFAULT_TARGET_AGREEMENT, Degree, SHIPPED_SEARCH_IMAGES, compile_choosing_degree,
    compile_package,
};
use cipherinfer_compiler::{Artifact, Compiled, HeModel, ServingOptions, Shape};
use cipherinfer_model::manifest::InputSpec;
use cipherinfer_model::{Manifest, ModelPackage, plain};
use cipherinfer_protocol::params::ExtendedParameters;
use cipherinfer_protocol::remote::ModelInfo;
use cipherinfer_protocol::{AlgorithmId, ErrorCode, ToolError};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Where a served model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A model shipped with cipherinfer, by name (`mnist-cnn`).
    Shipped(String),
    /// A model package directory (`model.json` + `model.onnx`).
    Package(PathBuf),
    /// A compiled model file (`cipherinfer compile`).
    Artifact(PathBuf),
}

impl ModelSource {
    /// A `--model` value: an existing file is a compiled model, a directory holding
    /// `model.json` or any value with a path separator a package, anything else a shipped
    /// model's name.
    pub fn parse(value: &str) -> Self {
        let path = Path::new(value);
        if path.is_file() {
            Self::Artifact(path.to_path_buf())
        } else if ModelPackage::is_package(path)
            || value.contains(std::path::MAIN_SEPARATOR)
            || value.contains('/')
        {
            Self::Package(path.to_path_buf())
        } else {
            Self::Shipped(value.to_string())
        }
    }
}

/// What a model needs to be served, whatever its source.
struct Prepared {
    name: String,
    description: String,
    labels: Vec<String>,
    input: InputSpec,
    compiled: Compiled,
}

fn prepare_shipped(manifest: &Manifest, name: &str) -> Result<Prepared, BoxErr> {
    let entry = manifest.model(name)?.clone();
    let ir = cipherinfer_model::onnx::import(&manifest.read_model(name)?.bytes)?;
    let samples = manifest.load_samples(&entry.dataset)?;
    let options = ServingOptions::default();
    let inputs: Vec<_> = plain::sample_inputs(&samples, &entry.input)?
        .into_iter()
        .take(SHIPPED_SEARCH_IMAGES)
        .map(|(t, _)| t)
        .collect();
    let calibration = &inputs[..inputs.len().min(options.convert.calibration_images)];
    // The activation degree is chosen as for a package, on the first sample images.
    let (compiled, _) = compile_choosing_degree(
        &ir,
        calibration,
        &inputs,
        &options,
        DEFAULT_TARGET_AGREEMENT,
    )?;
    Ok(Prepared {
        name: name.to_string(),
        description: entry.description.clone(),
        labels: entry.classes.clone(),
        input: entry.input.clone(),
        compiled,
    })
}

fn prepare_package(dir: &Path) -> Result<Prepared, BoxErr> {
    let package = ModelPackage::load(dir).map_err(|e| format!("{} [{}]", e, e.code()))?;
    // The activation degree is chosen as `cipherinfer compile` chooses it by default.
    let (compiled, _) = compile_package(
        &package,
        Degree::Auto,
        DEFAULT_TARGET_AGREEMENT,
        &ServingOptions::default(),
    )
    .map_err(|e| format!("model package {}: {e} [{}]", dir.display(), e.code()))?;
    Ok(Prepared {
        name: package.card.name.clone(),
        description: package.card.description.clone().unwrap_or_default(),
        labels: package.card.labels.clone(),
        input: package.input_spec(),
        compiled,
    })
}

impl Prepared {
    fn with_key_budget(mut self, max_key_bytes: Option<u64>) -> Result<Self, BoxErr> {
        if max_key_bytes.is_some() {
            self.compiled.he = self
                .compiled
                .he
                .with_key_budget(max_key_bytes)
                .map_err(|e| format!("model {}: {e} [{}]", self.name, e.code()))?;
        }
        Ok(self)
    }
}

fn prepare_artifact(path: &Path) -> Result<Prepared, BoxErr> {
    let coded = |e: cipherinfer_compiler::ArtifactError| format!("{e} [{}]", e.code());
    let artifact = Artifact::read(path).map_err(coded)?;
    let (network, he) = artifact.instantiate(path).map_err(coded)?;
    let input = artifact.card.input_spec(artifact.model.input_name());
    Ok(Prepared {
        name: artifact.card.name.clone(),
        description: artifact.card.description.clone().unwrap_or_default(),
        labels: artifact.card.labels.clone(),
        input,
        compiled: Compiled {
            model: artifact.model,
            network,
            he,
            conversion: artifact.conversion,
        },
    })
}

fn served(p: Prepared) -> Result<ServedModel, BoxErr> {
    let model = p.compiled.he;
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
        name: p.name,
        description: p.description,
        input_shape: vec![u32::try_from(c)?, u32::try_from(h)?, u32::try_from(w)?],
        output_shape: match spec.output_shape {
            Shape::Chw(c, h, w) => vec![c, h, w],
            Shape::Vector(n) => vec![n],
        }
        .into_iter()
        .map(u32::try_from)
        .collect::<Result<_, _>>()?,
        labels: p.labels,
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
        client_spec: spec,
        preprocessing: Some(serde_json::to_value(&p.input)?),
    };
    Ok(ServedModel { model, info })
}

/// What the served models take in memory ([`Registry::memory_needs`]), in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeeds {
    /// Every model's kept masks (once for the server).
    pub masks: u64,
    /// One client's decoded evaluation keys.
    pub keys_per_client: u64,
    /// One evaluation's working memory.
    pub working_per_inference: u64,
}

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
    /// model's output range (and, for a ReLU/MaxPool network, its activation ranges) uses the
    /// first 200 shipped samples of its dataset.
    pub fn shipped(names: &[String]) -> Result<Self, BoxErr> {
        let sources: Vec<ModelSource> = names.iter().cloned().map(ModelSource::Shipped).collect();
        Self::load(&sources)
    }

    /// Compiles the models of `sources` (the first is the default). Two models of one name are
    /// refused.
    pub fn load(sources: &[ModelSource]) -> Result<Self, BoxErr> {
        Self::load_with_key_budget(sources, None)
    }

    /// [`Registry::load`] with the rotation keys of the models compiled here (shipped names and
    /// packages) chosen within `max_key_bytes` of evaluation keys; a compiled model file keeps
    /// the budget it was compiled with.
    pub fn load_with_key_budget(
        sources: &[ModelSource],
        max_key_bytes: Option<u64>,
    ) -> Result<Self, BoxErr> {
        let mut manifest = None;
        let mut models = BTreeMap::new();
        let mut default_model = None;
        for source in sources {
            let prepared = match source {
                ModelSource::Shipped(name) => {
                    if manifest.is_none() {
                        manifest = Some(Manifest::shipped()?);
                    }
                    let m = manifest.as_ref().ok_or("manifest")?;
                    let shipped_package = m.dir().join(name);
                    if m.model(name).is_err()
                        && cipherinfer_model::package::is_valid_model_name(name)
                        && ModelPackage::is_package(&shipped_package)
                    {
                        // A model package shipped beside the manifest (colour-shapes).
                        prepare_package(&shipped_package)?
                    } else {
                        prepare_shipped(m, name)?
                    }
                }
                ModelSource::Package(dir) => prepare_package(dir)?,
                ModelSource::Artifact(path) => prepare_artifact(path)?,
            };
            let prepared = match source {
                ModelSource::Artifact(_) => prepared,
                _ => prepared.with_key_budget(max_key_bytes)?,
            };
            let name = prepared.name.clone();
            if models.contains_key(&name) {
                return Err(format!("two served models are named {name}").into());
            }
            default_model.get_or_insert_with(|| name.clone());
            models.insert(name, served(prepared)?);
        }
        let default_model = default_model.ok_or("at least one model must be served")?;
        Ok(Self {
            models,
            default_model,
        })
    }

    /// A model by name.
    pub fn get(&self, name: &str) -> Option<&ServedModel> {
        self.models.get(name)
    }

    /// The Algorithm IDs of the served models, sorted and unique.
    pub fn algorithm_ids(&self) -> Vec<AlgorithmId> {
        let mut ids: Vec<AlgorithmId> = self.all().map(|m| m.info.algorithm_id).collect();
        ids.sort_by_key(ToString::to_string);
        ids.dedup();
        ids
    }

    /// Refuses an Algorithm ID no served model uses (another scheme, security level, ring or
    /// wire format) as `ERROR_UNSUPPORTED_ALGORITHM`, listing the supported ones. An ID that is
    /// served, but not by the model asked for, is the caller's `ERROR_PARAMETER_MISMATCH`.
    pub fn check_algorithm(&self, id: &AlgorithmId) -> Result<(), ToolError> {
        let served = self.algorithm_ids();
        if served.contains(id) {
            return Ok(());
        }
        let listed: Vec<String> = served.iter().map(ToString::to_string).collect();
        Err(ToolError::new(
            ErrorCode::UnsupportedAlgorithm,
            format!(
                "algorithm id {id} is not served here (served: {})",
                listed.join(", ")
            ),
        )
        .with_details(serde_json::json!({ "supported": listed })))
    }

    /// The input object names (`file_name`s) the models of a parameter set take, sorted and
    /// unique: what a client with keys of that set may upload.
    pub fn input_objects_for(&self, parameter_id: &str) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .all()
            .filter(|m| m.info.parameter_id == parameter_id)
            .flat_map(|m| m.info.input_objects.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The default model's name.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// The largest evaluation-key bundle of a parameter set: every key its served models
    /// take together.
    pub fn key_bundle_bytes_for(&self, parameter_id: &str) -> Option<u64> {
        let models: Vec<&ServedModel> = self
            .models
            .values()
            .filter(|m| m.info.parameter_id == parameter_id)
            .collect();
        let first = models.first()?;
        let galois: std::collections::BTreeSet<u64> = models
            .iter()
            .flat_map(|m| m.info.galois_elements.iter().copied())
            .collect();
        let relin = models.iter().any(|m| m.info.relinearization);
        let bytes = cipherinfer_ckks::serialization::evaluation_keys_bytes(
            first.params(),
            galois.len(),
            relin,
        );
        Some(u64::try_from(bytes).unwrap_or(u64::MAX))
    }

    /// Memory the server plans for: every model's kept masks, the decoded key set of one client
    /// (the largest over the served parameter sets: every key its models use, each at the
    /// highest level one of them needs), and one evaluation's working memory (the largest).
    pub fn memory_needs(&self) -> MemoryNeeds {
        let masks = self
            .models
            .values()
            .map(|m| m.model.mask_bytes() as u64)
            .sum();
        // A client holds one key set per parameter set: the union of its models' keys, each
        // Galois element at the highest level any of them uses.
        let mut unions: BTreeMap<&str, (&Parameters, BTreeMap<u64, usize>, bool)> = BTreeMap::new();
        for m in self.models.values() {
            let (_, levels, relin) = unions
                .entry(m.info.parameter_id.as_str())
                .or_insert_with(|| (m.params(), BTreeMap::new(), false));
            for (g, level) in m.info.client_spec.galois_key_levels(m.params()) {
                let l = levels.entry(g).or_insert(level);
                *l = (*l).max(level);
            }
            *relin |= m.info.relinearization;
        }
        let keys = unions
            .values()
            .map(|(params, levels, relin)| {
                cipherinfer_compiler::client::key_memory_bytes(
                    params,
                    levels.values().copied(),
                    *relin,
                ) as u64
            })
            .max()
            .unwrap_or(0);
        let working = self
            .models
            .values()
            .map(|m| m.model.working_memory_bytes() as u64)
            .max()
            .unwrap_or(0);
        MemoryNeeds {
            masks,
            keys_per_client: keys,
            working_per_inference: working,
        }
    }

    /// The largest evaluation-key bundle of a served parameter set.
    pub fn max_key_bundle_bytes(&self) -> u64 {
        self.models
            .values()
            .filter_map(|m| self.key_bundle_bytes_for(&m.info.parameter_id))
            .max()
            .unwrap_or(0)
    }

    /// Every served model.
    pub fn all(&self) -> impl Iterator<Item = &ServedModel> {
        self.models.values()
    }

    /// Encodes every model's kept plaintext masks now rather than on each model's first
    /// inference (a server runs it in the background right after start-up).
    pub fn warm(&self) {
        for m in self.models.values() {
            let started = std::time::Instant::now();
            match m.model.warm() {
                Ok(()) => tracing::info!(
                    model = %m.info.name,
                    seconds = started.elapsed().as_secs_f64(),
                    "model warm"
                ),
                Err(e) => tracing::warn!(model = %m.info.name, error = %e, "warming failed"),
            }
        }
    }
}
