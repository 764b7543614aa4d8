//! The training run: set up once ([`Run::setup`], in `setup.rs`), then step by step
//! ([`Run::step`], [`Run::maybe_eval`], [`Run::maybe_save`]) to [`Run::finish`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use lomo_data::{BatchLoader, TextTokenizer};
use lomo_models::{Llama, TrainBackend};
use lomo_optim::LrSchedule;
use serde_json::json;

use super::log::Log;
use super::store::Store;
use crate::alloc;
use crate::args::TrainArgs;
use crate::checkpoint::{self, TrainerState};
use crate::data::model_batch;
use crate::progress::Progress;
use crate::scoring::{EvalResult, EvalSet};
use crate::signals::{Interrupted, Signal, StopRequest};
use crate::trainer::Trainer;

/// One `lomo train` run: the model and where its idle stages wait, the data, the optimizer,
/// the schedule, the log and (data parallel) the collective.
pub(super) struct Run<'a, B: TrainBackend> {
    pub(super) args: &'a TrainArgs,
    /// Out only while a step or a whole-model pass holds it.
    pub(super) model: Option<Llama<B>>,
    pub(super) store: Store<B>,
    pub(super) tokenizer: Option<TextTokenizer>,
    pub(super) tokenizer_file: Option<PathBuf>,
    pub(super) loader: BatchLoader,
    pub(super) trainer: Trainer<B>,
    pub(super) schedule: LrSchedule,
    /// The resolved flags, saved with every checkpoint.
    pub(super) config: String,
    /// Rows per micro-batch.
    pub(super) micro: usize,
    pub(super) collective: Option<lomo_dist::Collective<B::InnerBackend>>,
    pub(super) log: Log,
    pub(super) progress: Progress,
    pub(super) started: Instant,
    pub(super) start_step: u64,
    pub(super) total_steps: u64,
    pub(super) tokens_total: u64,
    pub(super) last_loss: f64,
    /// `--eval`'s file, read and checked at setup (rank 0 only).
    pub(super) eval_set: Option<EvalSet>,
    pub(super) eval_results: Vec<(u64, EvalResult)>,
    /// Data parallel: rank 0 logs, evaluates and saves; the others train quietly.
    pub(super) lead: bool,
}

impl<B: TrainBackend> Run<'_, B> {
    /// Every remaining step, each followed by its evaluation and saves, then the summary. A
    /// SIGINT or SIGTERM stops the run after the step it came in (data parallel: every rank
    /// after the same step), saved when `--save` is given ([`Run::interrupt`]).
    pub(super) fn train(mut self) -> Result<()> {
        let signals = StopRequest::catch()?;
        for step in self.start_step..self.total_steps {
            self.step(step)?;
            let done = step + 1;
            let eval_loss = self.maybe_eval(done)?;
            self.log.draw()?;
            let saved = self.maybe_save(done, eval_loss)?;
            if done == self.total_steps {
                break;
            }
            if let Some(signal) = self.stop_requested(&signals)? {
                return self.interrupt(signal, done, eval_loss, saved);
            }
        }
        self.finish()
    }

    /// Whether to stop after this step: a signal caught by this process or, data parallel, by
    /// any rank (the ranks agree at the coordinator, so all stop after the same step).
    fn stop_requested(&mut self, signals: &StopRequest) -> Result<Option<Signal>> {
        let here = signals.received();
        let Some(c) = self.collective.as_mut() else { return Ok(here) };
        let agreed = c.stop_together(here.map(|s| s.number().unsigned_abs())).context("data parallel")?;
        Ok(agreed.map(|code| Signal::from_code(code).unwrap_or(Signal::Terminate)))
    }

    /// Stops after step `done` as `signal` asked: with `--save`, rank 0 saves `step-N` (unless
    /// this step's was just written) through the same crash-safe path as every checkpoint; the
    /// working copy goes as at the end of a run; the group is left; and rank 0 says in one line
    /// what happened and where the checkpoint is (the other ranks stay quiet, as they train).
    fn interrupt(mut self, signal: Signal, done: u64, eval_loss: Option<f64>, saved: Option<PathBuf>) -> Result<()> {
        let args = self.args;
        let checkpoint = match (&args.save, self.lead, saved) {
            (Some(_), true, Some(sub)) => Some(sub),
            (Some(dir), true, None) => {
                let sub = dir.join(format!("step-{done}"));
                self.save_step(&sub, done, eval_loss)?;
                Some(sub)
            }
            _ => None,
        };
        self.remove_working_copy()?;
        if let Some(c) = self.collective.take() {
            c.finish().context("--world-size")?;
        }
        if self.lead {
            let what = format!("interrupted by {} after step {done} of {}", signal.name(), self.total_steps);
            self.progress.message(&match checkpoint {
                Some(sub) => format!("{what}: saved {0} (continue with --resume {0})", sub.display()),
                None => format!("{what}; nothing saved (no --save)"),
            });
        }
        Err(Interrupted(signal).into())
    }

    fn take_model(&mut self) -> Llama<B> {
        self.model.take().expect("the model is back after every pass")
    }

    /// The micro-batches of step `step` (counting from 0): this rank's slice of the next batch.
    fn next_micro_batches(&mut self, step: u64) -> Result<Vec<lomo_models::Batch>> {
        let args = self.args;
        let mut batch = self.loader.next_batch()?;
        if args.world_size > 1 {
            // This rank's slice: rows rank·k .. (rank+1)·k of every (whole) batch.
            let mut slices = batch.micro_batches(args.batch_size / args.world_size)?;
            if slices.len() != args.world_size {
                bail!("step {}: the batch does not split into {} slices", step + 1, args.world_size);
            }
            batch = slices.swap_remove(args.rank);
        }
        batch.micro_batches(self.micro)?.iter().map(model_batch).collect()
    }

    /// Step `step` (counting from 0): the optimizer step, the progress line and the log line.
    pub(super) fn step(&mut self, step: u64) -> Result<()> {
        let micro_batches = self.next_micro_batches(step)?;
        let tokens: u64 =
            micro_batches.iter().map(|b| b.attention_mask().iter().filter(|&&m| m != 0).count() as u64).sum();
        let lr = self.schedule.lr(step);
        let t0 = Instant::now();
        let io_before = self.store.disk().map(|d| d.io());
        let model = self.take_model();
        let (next, report) = match self.collective.as_mut() {
            Some(c) => self.trainer.step_reduced(model, &micro_batches, lr, c, self.store.as_dyn())?,
            None => {
                self.trainer.step_reduced(model, &micro_batches, lr, &mut lomo_optim::Local, self.store.as_dyn())?
            }
        };
        self.model = Some(next);
        let offload_io = self.store.after_step(step, io_before)?;
        let dt = t0.elapsed().as_secs_f64();
        self.tokens_total += tokens;
        if !report.loss.is_finite() && report.loss_scale.is_none() {
            bail!("step {}: the loss is {} (diverged); lower --lr or clip gradients", step + 1, report.loss);
        }
        self.last_loss = report.loss;
        if self.lead {
            self.progress.update(step + 1, report.loss, lr, tokens as f64 / dt, report.skipped);
        }
        let line = json!({
            "step": step + 1, "loss": report.loss, "lr": lr, "tokens": tokens, "tokens_per_s": tokens as f64 / dt,
            "seconds": dt, "grad_norm": report.grad_norm, "clip_coef": report.clip_coef, "loss_scale": report.loss_scale,
            "skipped": report.skipped, "peak_heap_bytes": alloc::peak(), "elapsed_s": self.progress.elapsed(), "offload": offload_io,
            "timings": (!report.timings.backward.is_empty()).then_some(&report.timings),
        });
        self.log.step(&line, step + 1, report.loss, lr)
    }

    /// `--eval` every `--eval-every` steps and at the last (rank 0): the result printed,
    /// logged and kept for the summary. Returns the eval loss when it ran.
    pub(super) fn maybe_eval(&mut self, done: u64) -> Result<Option<f64>> {
        let args = self.args;
        let (Some(set), Some(every)) = (&self.eval_set, args.eval_every) else { return Ok(None) };
        if !done.is_multiple_of(every) && done != self.total_steps {
            return Ok(None);
        }
        // The fields apart, so the set is read while the model goes through the store.
        let model = self.model.take().expect("the model is back after every pass");
        let (model, r) = self.store.whole(model, |m, _| set.evaluate(&m.valid(), args.batch_size))?;
        self.model = Some(model);
        self.progress.message(&format!("eval at step {done}: {}", serde_json::to_string(&r)?));
        self.log.eval(done, &r)?;
        let loss = r.loss;
        self.eval_results.push((done, r));
        Ok(Some(loss))
    }

    /// Rank 0's saves after step `done`: a `step-N` checkpoint every `--save-every` steps (and
    /// the rotation), the final checkpoint at the last; then the working copy of `--offload
    /// disk`, which the final checkpoint replaces, goes. Returns the `step-N` written, if one was.
    pub(super) fn maybe_save(&mut self, done: u64, eval_loss: Option<f64>) -> Result<Option<PathBuf>> {
        let args = self.args;
        if let (Some(dir), Some(every), true) = (&args.save, args.save_every, self.lead) {
            if done.is_multiple_of(every) && done != self.total_steps {
                let sub = dir.join(format!("step-{done}"));
                self.save_step(&sub, done, eval_loss)?;
                self.progress.message(&format!("saved {}", sub.display()));
                return Ok(Some(sub));
            }
        }
        if done != self.total_steps {
            return Ok(None);
        }
        if let (true, Some(dir)) = (self.lead, &args.save) {
            self.save_to(dir, done, eval_loss)?;
            self.progress.message(&format!("saved {}", dir.display()));
        }
        if let (Some(c), Some(_), Some(_)) = (self.collective.as_mut(), &args.save, self.store.disk()) {
            // The final checkpoint carries the run directory's other entries over, `offload/`
            // with every rank's working copy among them: a copy removed while rank 0 moves it
            // would be left behind, so the ranks remove theirs once it is written.
            c.barrier("the final checkpoint").context("--world-size")?;
        }
        self.remove_working_copy()?;
        Ok(None)
    }

    /// The `step-N` checkpoint `sub` of step `done`, then the rotation `--save-total-limit` asks for.
    fn save_step(&mut self, sub: &Path, done: u64, eval_loss: Option<f64>) -> Result<()> {
        let args = self.args;
        self.save_to(sub, done, eval_loss)?;
        if let (Some(dir), Some(limit)) = (&args.save, args.save_total_limit) {
            for old in checkpoint::rotate(dir, limit, args.keep_best)? {
                self.progress.message(&format!("removed {} (--save-total-limit {limit})", old.display()));
            }
        }
        Ok(())
    }

    /// The checkpoint of step `done` written to `dir` from the whole model.
    fn save_to(&mut self, dir: &Path, done: u64, eval_loss: Option<f64>) -> Result<()> {
        let state = self.state(done, eval_loss);
        let model = self.take_model();
        let (tokenizer, tokenizer_file) = (self.tokenizer.as_ref(), self.tokenizer_file.as_deref());
        let (config, trainer) = (&self.config, &self.trainer);
        let (model, ()) = self.store.whole(model, |m, disk| {
            checkpoint::save(dir, m, disk, tokenizer, tokenizer_file, &state, config, trainer)
        })?;
        self.model = Some(model);
        Ok(())
    }

    /// Where the run is after step `done`, for `--resume`.
    fn state(&self, done: u64, eval_loss: Option<f64>) -> TrainerState {
        let args = self.args;
        TrainerState {
            step: done,
            total_steps: self.total_steps,
            optimizer: args.optimizer,
            lr: args.lr,
            batch_size: args.batch_size,
            seed: args.seed,
            shuffle: !args.no_shuffle,
            data_position: self.loader.position(),
            loss_scaler: self.trainer.scaler().cloned(),
            tokens: self.tokens_total,
            eval_loss,
            world_size: args.world_size,
        }
    }

    /// The working copy is a scratch copy of what the final checkpoint holds (rank 0 writes it
    /// from its own copy; every rank's weights are the same), so it goes once the run is done.
    fn remove_working_copy(&self) -> Result<()> {
        let (Some(_), Some(d)) = (&self.args.save, self.store.disk()) else { return Ok(()) };
        std::fs::remove_dir_all(d.dir()).with_context(|| format!("removing the working copy {}", d.dir().display()))?;
        if self.lead {
            self.progress.message(&format!("removed the working copy {}", d.dir().display()));
        }
        if let (Some(parent), true) = (d.dir().parent(), self.args.world_size > 1) {
            // `offload/` once every rank's copy is gone (another rank may still hold one).
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    /// The end: the collective left, and rank 0's summary (a line on stderr, JSON on stdout).
    pub(super) fn finish(self) -> Result<()> {
        let wall = self.started.elapsed().as_secs_f64();
        if let Some(c) = self.collective {
            c.finish().context("--world-size")?;
        }
        if !self.lead {
            return Ok(());
        }
        let (steps, tokens, last_loss) = (self.total_steps - self.start_step, self.tokens_total, self.last_loss);
        let summary = json!({
            "steps": steps,
            "tokens": tokens,
            "wall_time_s": wall,
            "peak_heap_bytes": alloc::peak(),
            "peak_rss_bytes": alloc::peak_rss(),
            "final_loss": last_loss,
            "eval": self.eval_results.iter().map(|(s, r)| json!({"step": s, "result": r})).collect::<Vec<_>>(),
        });
        lomo_cli::noteln!(
            "done: {steps} steps, {tokens} tokens, {wall:.1} s, peak heap {}, final loss {last_loss:.4}",
            alloc::human(alloc::peak())
        );
        lomo_cli::sayln!("{summary}");
        Ok(())
    }
}
