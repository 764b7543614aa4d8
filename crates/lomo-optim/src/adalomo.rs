//! AdaLomo's update: LOMO's fusion with an Adafactor-style factored second moment
//! (Lv et al. 2023, "AdaLomo: Low-memory Optimization with Adaptive Learning Rate",
//! arXiv 2310.10195), as the authors' package `lomo-optim` 0.1.1 computes it.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ParamId};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Record, Recorder};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use lomo_kernels::update::reference::adalomo_finish;
use lomo_kernels::{AdaLomoScalars, UpdateKernels};

use crate::error::OptimError;
use crate::rule::{param_paths, GradPrep, UpdateRule};

/// AdaLomo's hyper-parameters; the defaults are the authors'.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaLomoConfig {
    /// Added to `g²` so the second moment is never 0 (`eps[0]`, 1e-30).
    pub eps_sq: f64,
    /// Floor of the parameter RMS in the relative step size (`eps[1]`, 1e-3).
    pub eps_scale: f64,
    /// The update's RMS is clipped to this (1.0).
    pub clip_threshold: f64,
    /// `beta_t = 1 - t^decay_rate` (-0.8).
    pub decay_rate: f64,
    /// Decoupled weight decay, scaled by the relative step size (0).
    pub weight_decay: f64,
}

impl Default for AdaLomoConfig {
    fn default() -> Self {
        Self { eps_sq: 1e-30, eps_scale: 1e-3, clip_threshold: 1.0, decay_rate: -0.8, weight_decay: 0.0 }
    }
}

impl AdaLomoConfig {
    /// Checks the values and builds the rule with empty state.
    pub fn init<B: Backend>(self) -> Result<AdaLomo<B>, OptimError> {
        let check = |field: &'static str, ok: bool, v: f64, want: &str| {
            if ok {
                Ok(())
            } else {
                Err(OptimError::Config { field, message: format!("must be {want}, got {v}") })
            }
        };
        check("eps_sq", self.eps_sq >= 0.0 && self.eps_sq.is_finite(), self.eps_sq, "a finite number >= 0")?;
        check(
            "eps_scale",
            self.eps_scale >= 0.0 && self.eps_scale.is_finite(),
            self.eps_scale,
            "a finite number >= 0",
        )?;
        check("clip_threshold", self.clip_threshold > 0.0, self.clip_threshold, "> 0")?;
        check("decay_rate", self.decay_rate < 0.0, self.decay_rate, "< 0")?;
        check(
            "weight_decay",
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            self.weight_decay,
            "a finite number >= 0",
        )?;
        Ok(AdaLomo { config: self, step: 0, state: HashMap::new() })
    }
}

/// The second-moment estimate of one parameter, fp32.
#[derive(Debug, Clone)]
pub enum SecondMoment<B: Backend> {
    /// A vector parameter keeps a full estimate `v`, one value per element.
    Full(Tensor<B, 1>),
    /// A matrix `[.., m, n]` keeps row and column means: `row` has `m` values per leading
    /// index, `col` has `n`; both flattened.
    Factored {
        /// Row statistics, `[lead * m]`.
        row: Tensor<B, 1>,
        /// Column statistics, `[lead * n]`.
        col: Tensor<B, 1>,
    },
}

/// AdaLomo's update rule with its state. O(m + n) fp32 per matrix.
#[derive(Debug, Clone)]
pub struct AdaLomo<B: Backend> {
    config: AdaLomoConfig,
    step: u64,
    state: HashMap<ParamId, SecondMoment<B>>,
}

/// AdaLomo's state as a burn record, keyed by parameter path so it survives a reload of the
/// model from an HF checkpoint (which gives the parameters new ids).
#[derive(Record, Debug, Clone)]
pub struct AdaLomoRecord<B: Backend> {
    /// Updates applied so far (`t` of the last update).
    pub step: u64,
    /// One entry per parameter that has state.
    pub params: Vec<AdaLomoParamRecord<B>>,
}

/// One parameter's second moment in an [`AdaLomoRecord`].
#[derive(Record, Debug, Clone)]
pub struct AdaLomoParamRecord<B: Backend> {
    /// The parameter's path in the model (`layers.0.attn.q.weight`).
    pub path: String,
    /// `v` for a vector, `row` for a matrix.
    pub first: Tensor<B, 1>,
    /// `col` for a matrix.
    pub col: Option<Tensor<B, 1>>,
}

impl<B: Backend> AdaLomo<B> {
    /// The configuration.
    pub fn config(&self) -> &AdaLomoConfig {
        &self.config
    }

    /// Updates applied so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The second moment of `id`, taken out, on `device` (the parameter's): a state restored
    /// from a checkpoint lands on one device, while the stages of a placed model live on
    /// several.
    fn take_state(&mut self, id: ParamId, device: &B::Device) -> Option<SecondMoment<B>> {
        let on = |t: Tensor<B, 1>| if &t.device() == device { t } else { t.to_device(device) };
        self.state.remove(&id).map(|m| match m {
            SecondMoment::Factored { row, col } => SecondMoment::Factored { row: on(row), col: on(col) },
            SecondMoment::Full(v) => SecondMoment::Full(on(v)),
        })
    }

    /// The state of one parameter, if it has been updated.
    pub fn second_moment(&self, id: ParamId) -> Option<&SecondMoment<B>> {
        self.state.get(&id)
    }

    /// Bytes of optimizer state (fp32).
    pub fn state_bytes(&self) -> usize {
        self.state
            .values()
            .map(|m| match m {
                SecondMoment::Full(v) => v.shape().num_elements() * 4,
                SecondMoment::Factored { row, col } => (row.shape().num_elements() + col.shape().num_elements()) * 4,
            })
            .sum()
    }

    /// The state as a record, naming parameters by their path in `model`.
    pub fn to_record<BM: Backend, M: Module<BM>>(&self, model: &M) -> AdaLomoRecord<B> {
        let paths = param_paths(model);
        let mut params: Vec<AdaLomoParamRecord<B>> = self
            .state
            .iter()
            .filter_map(|(id, m)| {
                let path = paths.get(id)?.clone();
                Some(match m {
                    SecondMoment::Full(v) => AdaLomoParamRecord { path, first: v.clone(), col: None },
                    SecondMoment::Factored { row, col } => {
                        AdaLomoParamRecord { path, first: row.clone(), col: Some(col.clone()) }
                    }
                })
            })
            .collect();
        params.sort_by(|a, b| a.path.cmp(&b.path));
        AdaLomoRecord { step: self.step, params }
    }

    /// Restores state saved by [`AdaLomo::to_record`] for the parameters of `model`.
    /// A path that `model` does not have is an error naming it.
    pub fn load_record<BM: Backend, M: Module<BM>>(
        &mut self,
        record: AdaLomoRecord<B>,
        model: &M,
    ) -> Result<(), OptimError> {
        let ids: HashMap<String, ParamId> = param_paths(model).into_iter().map(|(id, p)| (p, id)).collect();
        let mut state = HashMap::new();
        for p in record.params {
            let Some(&id) = ids.get(&p.path) else {
                return Err(OptimError::State { param: p.path, message: "no such parameter in the model".into() });
            };
            let moment = match p.col {
                None => SecondMoment::Full(p.first),
                Some(col) => SecondMoment::Factored { row: p.first, col },
            };
            state.insert(id, moment);
        }
        self.state = state;
        self.step = record.step;
        Ok(())
    }
}

impl AdaLomoConfig {
    /// The scalars of one update at learning rate `lr` and moment decay `beta`, as
    /// lomo-kernels takes them.
    fn scalars(&self, lr: f64, beta: f64) -> AdaLomoScalars {
        AdaLomoScalars {
            lr,
            beta,
            eps_sq: self.eps_sq,
            eps_scale: self.eps_scale,
            clip_threshold: self.clip_threshold,
            weight_decay: self.weight_decay,
        }
    }
}

impl<B: UpdateKernels> UpdateRule<B> for AdaLomo<B> {
    fn begin_step(&mut self) {
        self.step += 1;
    }

    /// The record of [`AdaLomo::to_record`] in burn's binary format (burn adds `.bin`).
    fn save_state<BM: Backend, M: Module<BM>>(&self, model: &M, file: &Path) -> Result<(), OptimError> {
        BinFileRecorder::<FullPrecisionSettings>::new().record(self.to_record(model), file.to_path_buf()).map_err(|e| {
            OptimError::StateFile {
                action: "writing",
                rule: "AdaLomo",
                file: file.with_extension("bin"),
                message: e.to_string(),
            }
        })
    }

    /// The record [`UpdateRule::save_state`] wrote, through [`AdaLomo::load_record`].
    fn load_state<BM: Backend, M: Module<BM>>(
        &mut self,
        model: &M,
        file: &Path,
        device: &B::Device,
    ) -> Result<(), OptimError> {
        let record = BinFileRecorder::<FullPrecisionSettings>::new().load(file.to_path_buf(), device).map_err(|e| {
            OptimError::StateFile {
                action: "reading",
                rule: "AdaLomo",
                file: file.with_extension("bin"),
                message: e.to_string(),
            }
        })?;
        self.load_record(record, model)
    }

    fn update<const D: usize>(
        &mut self,
        id: ParamId,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        lr: f64,
    ) -> Tensor<B, D> {
        let c = self.config;
        // t counts from 1 (`begin_step` runs first): beta is 0 on the first update.
        let t = self.step.max(1) as f64;
        let beta = 1.0 - t.powf(c.decay_rate);
        let dims = grad.dims();
        let sq = grad.clone().square().add_scalar(c.eps_sq);
        let update = if D >= 2 {
            let (m, n) = (dims[D - 2], dims[D - 1]);
            let lead = dims[..D - 2].iter().product::<usize>();
            let sq: Tensor<B, 3> = sq.reshape([lead, m, n]);
            let row_mean = sq.clone().mean_dim(2).reshape([lead * m]);
            let col_mean = sq.mean_dim(1).reshape([lead * n]);
            let (row, col) = match self.take_state(id, &grad.device()) {
                Some(SecondMoment::Factored { row, col }) => (
                    row.mul_scalar(beta) + row_mean.mul_scalar(1.0 - beta),
                    col.mul_scalar(beta) + col_mean.mul_scalar(1.0 - beta),
                ),
                _ => (row_mean.mul_scalar(1.0 - beta), col_mean.mul_scalar(1.0 - beta)),
            };
            let row3: Tensor<B, 3> = row.clone().reshape([lead, m, 1]);
            let r_factor = (row3.clone() / row3.mean_dim(1)).sqrt().recip();
            let c_factor: Tensor<B, 3> = col.clone().reshape([lead, 1, n]).sqrt().recip();
            let g3: Tensor<B, 3> = grad.reshape([lead, m, n]);
            let u = (r_factor * c_factor) * g3;
            self.state.insert(id, SecondMoment::Factored { row, col });
            u.reshape(dims)
        } else {
            let n = dims[0];
            let sq1: Tensor<B, 1> = sq.reshape([n]);
            let v = match self.take_state(id, &grad.device()) {
                Some(SecondMoment::Full(v)) => v.mul_scalar(beta) + sq1.mul_scalar(1.0 - beta),
                _ => sq1.mul_scalar(1.0 - beta),
            };
            let u = v.clone().sqrt().recip().reshape(dims) * grad;
            self.state.insert(id, SecondMoment::Full(v));
            u
        };
        adalomo_finish(param, update, &c.scalars(lr, beta))
    }

    /// A matrix goes through [`UpdateKernels::adalomo_matrix_update`] (three parallel passes on
    /// Flex, no weight-sized temporaries); a vector or a higher-rank tensor through
    /// [`UpdateRule::update`].
    fn update_raw<const D: usize>(
        &mut self,
        id: ParamId,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        prep: &GradPrep,
        lr: f64,
    ) -> Tensor<B, D> {
        if D != 2 {
            let grad = prep.apply(grad);
            return self.update(id, param, grad, lr);
        }
        let t = self.step.max(1) as f64;
        let beta = 1.0 - t.powf(self.config.decay_rate);
        let moment = match self.take_state(id, &grad.device()) {
            Some(SecondMoment::Factored { row, col }) => {
                Some((row.into_primitive().tensor(), col.into_primitive().tensor()))
            }
            _ => None,
        };
        let (p, row, col) = B::adalomo_matrix_update(
            param.into_primitive().tensor(),
            grad.into_primitive().tensor(),
            *prep,
            moment,
            self.config.scalars(lr, beta),
        );
        let vec = |v| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(v));
        self.state.insert(id, SecondMoment::Factored { row: vec(row), col: vec(col) });
        Tensor::from_primitive(TensorPrimitive::Float(p))
    }
}
