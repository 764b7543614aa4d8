//! Run configs: `lomo train --config run.toml`, every flag of `lomo train` as a snake_case key
//! (`batch_size = 8`, `data = ["a.jsonl"]`, `no_shuffle = true`).
//!
//! A config is turned into the flags it stands for, ahead of the command line's own, so clap
//! parses and checks one argument list whatever its sources and every value gets the same
//! validation and the same messages. Precedence, lowest first: the resolved config of the
//! checkpoint `--resume` names ([`CONFIG_FILE`], written into every checkpoint), then
//! `--config`, then the command line. A key that a higher source sets replaces the lower
//! sources' value of it and of the keys it excludes (`model` / `preset` / `resume`,
//! `steps` / `epochs`), so a list such as `data` is replaced, not extended.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, CommandFactory};
use toml::de::{DeTable, DeValue};

use crate::args::{Cli, TrainArgs};

/// The resolved config inside a checkpoint.
pub const CONFIG_FILE: &str = "lomo_config.toml";

/// Keys that exclude one another: setting one drops the others from lower sources.
const EXCLUSIVE: &[&[&str]] = &[&["model", "preset", "resume"], &["steps", "epochs"]];

/// Keys a checkpoint's config does not carry into the run that resumes from it.
const NOT_RESUMED: &[&str] = &["model", "preset", "resume", "config"];

/// Where a flag of the expanded command line came from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The flag, e.g. `--batch-size`.
    pub flag: String,
    pub file: PathBuf,
    pub line: usize,
}

/// The command line with the configs' flags spliced in.
#[derive(Debug)]
pub struct Expanded {
    pub argv: Vec<OsString>,
    pub origins: Vec<Origin>,
}

impl Expanded {
    /// The config line a flag came from, for clap's messages about its value.
    pub fn origin_of(&self, flag: &str) -> Option<&Origin> {
        self.origins.iter().find(|o| o.flag == flag)
    }
}

/// The flags of this process's `lomo train` whose values came from config files, for
/// [`locate`]; set once, by [`expand`].
static ORIGINS: OnceLock<Vec<Origin>> = OnceLock::new();

/// `err` located in the config file that gave its flag's value: an error whose message starts
/// with a flag (`--lr: must be a finite number > 0, got NaN`) becomes `run.toml:4: lr: must be …`
/// when line 4 of `--config run.toml` set it (or the resumed checkpoint's config did). Other
/// errors, and flags given on the command line, are left as they are.
pub fn locate(err: anyhow::Error) -> anyhow::Error {
    locate_in(ORIGINS.get().map_or(&[], Vec::as_slice), err)
}

fn locate_in(origins: &[Origin], err: anyhow::Error) -> anyhow::Error {
    let message = err.to_string();
    let flag = message.split([':', ' ', '=']).next().unwrap_or_default();
    let Some(origin) = origins.iter().find(|o| o.flag == flag && flag.starts_with("--")) else { return err };
    let at = format!("{}:{}", origin.file.display(), origin.line);
    if err.chain().count() > 1 {
        return err.context(at);
    }
    let key = flag.trim_start_matches("--").replace('-', "_");
    anyhow::anyhow!("{at}: {key}{}", &message[flag.len()..])
}

/// One key of a config, turned into flags.
#[derive(Debug, Clone)]
struct Entry {
    origin: Origin,
    args: Vec<OsString>,
}

/// Expands `lomo train`'s `--config FILE` and `--resume DIR`'s saved config into flags; any
/// other command line is returned as it is.
pub fn expand(argv: Vec<OsString>) -> Result<Expanded> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("train") {
        return Ok(Expanded { argv, origins: Vec::new() });
    }
    let given = &argv[2..];
    let mut layers: Vec<(PathBuf, Vec<(String, Entry)>)> = Vec::new();
    if let Some(dir) = flag_value(given, "resume") {
        let dir = PathBuf::from(dir);
        let file = dir.join(CONFIG_FILE);
        if file.exists() {
            let entries = read(&file)?.into_iter().filter(|(k, _)| !NOT_RESUMED.contains(&k.as_str())).collect();
            layers.push((file, entries));
        } else {
            // Named here, before clap would ask for the flags a checkpoint's config supplies.
            check_checkpoint_dir(&dir)?;
        }
    }
    if let Some(file) = flag_value(given, "config") {
        let file = PathBuf::from(file);
        let entries = read(&file)?;
        layers.push((file, entries));
    }
    if layers.is_empty() {
        return Ok(Expanded { argv, origins: Vec::new() });
    }
    let mut merged: BTreeMap<String, Entry> = BTreeMap::new();
    for (_, entries) in layers {
        for (key, entry) in entries {
            drop_excluded(&mut merged, &key);
            merged.insert(key, entry);
        }
    }
    for key in train_keys().into_keys() {
        if flag_value(given, &key).is_some() || has_switch(given, &key) {
            drop_excluded(&mut merged, &key);
        }
    }
    let mut out: Vec<OsString> = argv[..2].to_vec();
    let mut origins = Vec::new();
    for entry in merged.into_values() {
        out.extend(entry.args);
        origins.push(entry.origin);
    }
    out.extend(given.iter().cloned());
    let _ = ORIGINS.set(origins.clone());
    Ok(Expanded { argv: out, origins })
}

/// That `--resume DIR` names a checkpoint directory (one without its run's config, written
/// before checkpoints carried it, still has its trainer state).
fn check_checkpoint_dir(dir: &Path) -> Result<()> {
    let state = lomo_cli::save_dir::STATE_FILE;
    if !dir.exists() {
        bail!("--resume {}: no such directory", dir.display());
    }
    if !dir.is_dir() {
        bail!("--resume {}: not a directory (a checkpoint is the directory `--save` wrote)", dir.display());
    }
    if !dir.join(state).exists() {
        bail!(
            "--resume {}: not a checkpoint (no {state} or {CONFIG_FILE}: was it written by `lomo train --save`?)",
            dir.display()
        );
    }
    Ok(())
}

/// Removes `key` and the keys it excludes.
fn drop_excluded(merged: &mut BTreeMap<String, Entry>, key: &str) {
    merged.remove(key);
    for group in EXCLUSIVE.iter().filter(|g| g.contains(&key)) {
        for k in group.iter() {
            merged.remove(*k);
        }
    }
}

/// The flags of `lomo train` by key, with whether each is a switch, takes one value, or many.
fn train_keys() -> BTreeMap<String, ArgAction> {
    let command = Cli::command();
    let train = command.find_subcommand("train").expect("lomo has a train subcommand");
    train
        .get_arguments()
        .filter_map(|a| Some((a.get_long()?.replace('-', "_"), a.get_action().clone())))
        .filter(|(k, _)| k != "help")
        .collect()
}

/// The value of `--name V` or `--name=V` on the command line (the last one given).
fn flag_value<'a>(args: &'a [OsString], key: &str) -> Option<&'a std::ffi::OsStr> {
    let flag = format!("--{}", key.replace('_', "-"));
    let prefix = format!("{flag}=");
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        let Some(s) = a.to_str() else { continue };
        if s == flag {
            found = args.get(i + 1).map(OsString::as_os_str);
        } else if let Some(v) = s.strip_prefix(&prefix) {
            found = Some(std::ffi::OsStr::new(v));
        }
    }
    found
}

/// Whether a switch (`--no-shuffle`) is on the command line.
fn has_switch(args: &[OsString], key: &str) -> bool {
    let flag = format!("--{}", key.replace('_', "-"));
    args.iter().any(|a| a.to_str() == Some(flag.as_str()))
}

/// Reads a config file into flags, key by key; an unknown key, a wrong kind of value or a
/// TOML syntax error names the file and line.
fn read(file: &Path) -> Result<Vec<(String, Entry)>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("--config {}", file.display()))?;
    read_text(file, &text)
}

/// [`read`] of `text`, the contents of `file`.
fn read_text(file: &Path, text: &str) -> Result<Vec<(String, Entry)>> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table = DeTable::parse(text).map_err(|e| {
        let line = e.span().map(|s| line_of(s.start)).unwrap_or(1);
        anyhow::anyhow!("{}:{line}: {}", file.display(), e.message().trim())
    })?;
    let keys = train_keys();
    let mut entries = Vec::new();
    for (key, value) in table.get_ref() {
        let name = key.get_ref().to_string();
        let line = line_of(key.span().start);
        let at = format!("{}:{line}", file.display());
        let flag = format!("--{}", name.replace('_', "-"));
        if name == "config" {
            bail!("{at}: `config`: a config file cannot name another config file");
        }
        let Some(action) = keys.get(&name) else {
            let known: Vec<&str> = keys.keys().map(String::as_str).filter(|k| *k != "config").collect();
            bail!("{at}: unknown key `{name}` (lomo train's flags in snake_case: {})", known.join(", "));
        };
        let scalar = |v: &DeValue| -> Result<OsString> {
            match v {
                DeValue::String(s) => Ok(OsString::from(s.as_ref())),
                DeValue::Integer(i) => Ok(OsString::from(i.to_string())),
                DeValue::Float(f) => Ok(OsString::from(f.to_string())),
                DeValue::Boolean(_) => bail!("{at}: `{name}` takes a value, not true/false"),
                _ => bail!("{at}: `{name}` takes a string or a number"),
            }
        };
        let args = match (action, value.get_ref()) {
            (ArgAction::SetTrue, DeValue::Boolean(on)) => {
                if *on {
                    vec![OsString::from(&flag)]
                } else {
                    Vec::new()
                }
            }
            (ArgAction::SetTrue, _) => bail!("{at}: `{name}` is a switch: true or false"),
            (ArgAction::Append, DeValue::Array(items)) => {
                let mut args = Vec::new();
                for item in items {
                    args.push(OsString::from(&flag));
                    args.push(scalar(item.get_ref())?);
                }
                args
            }
            (_, DeValue::Array(_)) => bail!("{at}: `{name}` takes one value, not a list"),
            (_, v) => vec![OsString::from(&flag), scalar(v)?],
        };
        entries.push((name, Entry { origin: Origin { flag, file: file.to_path_buf(), line }, args }));
    }
    Ok(entries)
}

/// The resolved config of a run, as `--config` reads it back: every flag with its value.
/// Paths are made absolute, so that `--resume` works from any directory.
pub fn render(args: &TrainArgs) -> Result<String> {
    let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let mut args = args.clone();
    for path in
        [&mut args.source.model, &mut args.eval, &mut args.save, &mut args.resume, &mut args.log].into_iter().flatten()
    {
        *path = absolute(path);
    }
    for path in &mut args.data {
        *path = absolute(path);
    }
    let body = toml::to_string(&args).context("writing the run's config")?;
    Ok(format!("# The resolved config of this run (`lomo train --config {CONFIG_FILE}` reruns it; `--resume` reads it).\n{body}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::Command;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn train_args(argv: &[OsString]) -> TrainArgs {
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Train(a) => a,
            _ => unreachable!(),
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lomo-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        file
    }

    #[test]
    fn the_resolved_config_reads_back_as_the_same_flags() {
        let argv = os(&[
            "lomo",
            "train",
            "--preset",
            "stories260k",
            "--data",
            "/d/a.jsonl",
            "--data",
            "/d/b.jsonl",
            "--optimizer",
            "adalomo",
            "--lr",
            "3e-4",
            "--schedule",
            "cosine",
            "--warmup-ratio",
            "0.03",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--micro-batch-size",
            "2",
            "--clip-grad-norm",
            "1",
            "--dtype",
            "bf16",
            "--no-shuffle",
            "--format",
            "chat",
            "--save",
            "/out",
            "--save-every",
            "10",
            "--save-total-limit",
            "3",
        ]);
        let args = train_args(&argv);
        let file = temp_file("round_trip.toml", &render(&args).unwrap());
        let expanded = expand(os(&["lomo", "train", "--config", file.to_str().unwrap()])).unwrap();
        let mut back = train_args(&expanded.argv);
        assert_eq!(back.config.take(), Some(file));
        assert_eq!(back, args);
    }

    #[test]
    fn the_command_line_overrides_a_key_and_the_keys_it_excludes() {
        let file = temp_file("excl.toml", "preset = \"stories260k\"\ndata = [\"/a\", \"/b\"]\noptimizer = \"lomo\"\nlr = 0.1\nsteps = 5\nbatch_size = 2\n");
        let config = file.to_str().unwrap();
        let expanded =
            expand(os(&["lomo", "train", "--config", config, "--epochs", "1", "--data", "/c", "--model", "/m"]))
                .unwrap();
        let args = train_args(&expanded.argv);
        assert_eq!((args.steps, args.epochs), (None, Some(1)));
        assert_eq!(args.data, [PathBuf::from("/c")]);
        assert_eq!((args.source.preset, args.source.model), (None, Some(PathBuf::from("/m"))));
        assert_eq!(expanded.origin_of("--lr").map(|o| o.line), Some(4));
        assert!(expanded.origin_of("--steps").is_none());
    }

    #[test]
    fn an_error_about_a_flag_from_a_config_names_its_line() {
        let origins = [Origin { flag: "--lr".into(), file: PathBuf::from("run.toml"), line: 4 }];
        let located = locate_in(&origins, anyhow::anyhow!("--lr: must be a finite number > 0, got NaN"));
        assert_eq!(located.to_string(), "run.toml:4: lr: must be a finite number > 0, got NaN");
        // A flag from the command line, or an error about no flag, is left alone.
        let other = locate_in(&origins, anyhow::anyhow!("--batch-size: must be at least 1"));
        assert_eq!(other.to_string(), "--batch-size: must be at least 1");
        let chained = locate_in(&origins, anyhow::anyhow!("disk full").context("--lr 0.1: writing"));
        assert_eq!(format!("{chained:#}"), "run.toml:4: --lr 0.1: writing: disk full");
    }

    /// Mutations of a valid run config (truncated, flipped, spliced, numbers past every limit)
    /// read into flags and parsed by clap: an error or a parse, never a panic. The count is in
    /// the README's reliability section.
    #[test]
    fn mutated_run_configs_never_panic() {
        let seeds = [
            "preset = \"stories260k\"\ndata = [\"/d/a.jsonl\", \"/d/b.jsonl\"]\noptimizer = \"adalomo\"\nlr = 3e-4\nsteps = 5\nbatch_size = 8\nmicro_batch_size = 2\nno_shuffle = true\nsave = \"/out\"\n",
            "# a comment\nmodel = '/m'\ndata = ['x.jsonl']\noptimizer = \"lomo\"\nlr = 1e-2\nepochs = 2\nbatch_size = 4\nmax_len = 512\nclip_grad_norm = 1.0\ndtype = \"bf16\"\n",
        ];
        let seeds: Vec<_> = seeds.iter().map(|s| lomo_testutil::mutate::Seed::text(*s)).collect();
        let file = Path::new("run.toml");
        let ran = lomo_testutil::mutate::run("--config TOML", &seeds, 5000, |bytes| {
            let Ok(text) = std::str::from_utf8(bytes) else { return Ok(()) };
            match read_text(file, text) {
                Ok(entries) => {
                    let mut argv = os(&["lomo", "train"]);
                    entries.into_iter().for_each(|(_, e)| argv.extend(e.args));
                    if let Err(e) = Cli::try_parse_from(&argv) {
                        let _ = e.render().to_string();
                    }
                    Ok(())
                }
                Err(e) => {
                    let message = format!("{e:#}");
                    if !message.starts_with("run.toml:") {
                        return Err(format!("error without the file and line: {message}"));
                    }
                    lomo_testutil::mutate::one_line(&message)
                }
            }
        });
        assert_eq!(ran, 5000);
    }

    #[test]
    fn other_subcommands_are_left_alone() {
        let argv = os(&["lomo", "eval", "--config", "x.toml"]);
        assert_eq!(expand(argv.clone()).unwrap().argv, argv);
    }
}
