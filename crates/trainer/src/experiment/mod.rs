//! `swarm experiment FILE.toml`: a matrix of training runs, resumable, summarised as
//! `results.csv`, `curves.csv`, a Markdown report and PNG plots.
//!
//! ```toml
//! title = "Fashion-MNIST, 16 nodes"
//! out = "docs/results"          # run directories, CSVs and plots
//! report = "docs/RESULTS.md"    # the Markdown report (default: OUT/results.md)
//! notes = "Free text printed under the title."
//!
//! [base]                        # any `swarm train` setting, shared by every run
//! nodes = 16
//! epochs = 4
//!
//! [[group]]                     # one table and one set of plots each
//! name = "swarm-local-steps"
//! title = "SwarmSGD, H local steps"
//! reference = { local_steps = "1" }   # optional: the row the others are compared with
//! [group.matrix]                # lists are crossed; scalars are set
//! algo = "swarm"
//! local_steps = ["1", "2", "4", "8"]
//! seed = [1, 2, 3]
//! [[group.variant]]             # optional: settings that go together, each crossed with the matrix
//! name = "H = 8, lr 0.1"        # its label in the tables
//! local_steps = "8"
//! lr = 0.1
//! ```
//!
//! Groups of emulated runs (`cluster = "..."` in the base or the matrix, see `swarm train
//! --cluster`) are reported in virtual time instead: time to a target accuracy and accuracy at a
//! time budget (group keys `target` and `budget_seconds`), and plots against virtual time. With
//! `section = "NAME"`, the report replaces only the part of the `report` file between
//! `<!-- begin NAME -->` and `<!-- end NAME -->` (appended when absent), so two experiments can
//! share one file.
//!
//! Each run's directory is named by a hash of its full configuration: a run that already finished
//! (its `summary.json` exists) is read back instead of trained again, so an interrupted experiment
//! resumes where it stopped and groups that share a configuration share the run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use crate::config::TrainConfig;
use crate::netmodel::NETWORKS;
use crate::plot::{line_chart, Chart, Series};
use crate::TrainError;

mod virtual_time;

/// Flags of `swarm experiment`.
#[derive(Debug, Clone, Args)]
pub struct ExperimentArgs {
    /// The experiment file (TOML): base settings and groups of runs.
    pub file: PathBuf,
    /// Use only the first N training examples in every run (quick checks).
    #[arg(long)]
    pub train_subset: Option<usize>,
    /// Use only the first N test examples in every run.
    #[arg(long)]
    pub test_subset: Option<usize>,
    /// Override the file's `out` directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the file's `report` path.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The experiment file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    /// Title of the report.
    pub title: String,
    /// Free text under the title.
    #[serde(default)]
    pub notes: String,
    /// Output directory.
    pub out: PathBuf,
    /// Markdown report path (default `OUT/results.md`).
    pub report: Option<PathBuf>,
    /// Write the report as this named section of the report file, keeping the rest of it.
    pub section: Option<String>,
    /// Settings shared by every run.
    #[serde(default)]
    pub base: toml::Table,
    /// Groups of runs.
    #[serde(default)]
    pub group: Vec<Group>,
}

/// A group of runs: the cross product of its matrix's lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Short name (file names of its plots).
    pub name: String,
    /// Heading of its table.
    pub title: Option<String>,
    /// Settings: lists are crossed, scalars set.
    pub matrix: toml::Table,
    /// Configurations that differ in several settings at once (e.g. each algorithm with its own
    /// learning rate), each crossed with the matrix; an optional `name` key labels it.
    #[serde(default)]
    pub variant: Vec<toml::Table>,
    /// Settings that pick the reference configuration of the group's comparisons.
    #[serde(default)]
    pub reference: toml::Table,
    /// Emulated runs: the test accuracy (a fraction) whose first crossing is timed.
    pub target: Option<f64>,
    /// Emulated runs: the virtual time at which accuracies are compared (default: the earliest
    /// end of the group's runs).
    pub budget_seconds: Option<f64>,
}

/// One finished run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Group it was listed in.
    pub group: String,
    /// The settings that vary within the group (seed excluded), e.g. `local_steps=4`.
    pub label: String,
    /// The full configuration.
    pub config: TrainConfig,
    /// Final test accuracy of the averaged model.
    pub accuracy: f64,
    /// Mean over nodes of their own model's accuracy.
    pub node_accuracy: f64,
    /// Bytes sent by all nodes.
    pub bytes: u64,
    /// Training seconds on this machine.
    pub train_seconds: f64,
    /// Per epoch: (epoch, test accuracy, bytes so far, modelled seconds so far on each network).
    /// Emulated runs: per evaluation instant, with no modelled seconds.
    pub curve: Vec<(usize, f64, u64, Vec<f64>)>,
    /// Emulated runs: the virtual seconds of each row of `curve` (empty for real runs).
    pub virtual_seconds: Vec<f64>,
    /// Mean over nodes of compute and wait seconds.
    pub compute_wait: (f64, f64),
    /// Run directory.
    pub dir: PathBuf,
}

impl RunResult {
    /// Modelled seconds of the whole run on network `k` of [`NETWORKS`].
    pub fn modelled(&self, k: usize) -> f64 {
        self.curve
            .last()
            .and_then(|c| c.3.get(k).copied())
            .unwrap_or(f64::NAN)
    }

    /// Bits per node of `bytes` sent by all nodes (the whole run's [`RunResult::bytes`], or a
    /// row of [`RunResult::curve`]).
    pub fn bits_per_node(&self, bytes: u64) -> f64 {
        8.0 * bytes as f64 / self.config.nodes.max(1) as f64
    }

    /// Mean over `runs` of the whole run's bits per node.
    fn mean_bits_per_node(runs: &[&RunResult]) -> f64 {
        mean_std(
            &runs
                .iter()
                .map(|r| r.bits_per_node(r.bytes))
                .collect::<Vec<_>>(),
        )
        .0
    }
}

fn cfg_err(file: &Path, msg: String) -> TrainError {
    TrainError::Config(format!("experiment {}: {msg}", file.display()))
}

/// Parses and checks an experiment file: every group's settings must make valid runs.
pub fn load(path: &Path) -> Result<ExperimentFile, TrainError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| cfg_err(path, format!("cannot read: {e}")))?;
    let file: ExperimentFile = toml::from_str(&text).map_err(|e| cfg_err(path, e.to_string()))?;
    if file.group.is_empty() {
        return Err(cfg_err(path, "no [[group]] of runs".into()));
    }
    Ok(file)
}

/// The runs of a group: `base` with each variant's settings (or alone, without variants), crossed
/// with `matrix`'s lists. Returns each run's settings and label.
fn expand_group(
    base: &toml::Table,
    variants: &[toml::Table],
    matrix: &toml::Table,
) -> Vec<(toml::Table, String)> {
    if variants.is_empty() {
        let (tables, varying) = expand(base, matrix);
        return tables
            .into_iter()
            .map(|t| {
                let l = label(&t, &varying);
                (t, l)
            })
            .collect();
    }
    let mut runs = Vec::new();
    for variant in variants {
        let mut settings = base.clone();
        let mut name = None;
        for (k, v) in variant {
            if k == "name" {
                name = Some(show(v));
            } else {
                settings.insert(k.clone(), v.clone());
            }
        }
        let name = name.unwrap_or_else(|| {
            variant
                .iter()
                .map(|(k, v)| format!("{k}={}", show(v)))
                .collect::<Vec<_>>()
                .join(" ")
        });
        let (tables, varying) = expand(&settings, matrix);
        for t in tables {
            let l = if varying.is_empty() {
                name.clone()
            } else {
                format!("{name} {}", label(&t, &varying))
            };
            runs.push((t, l));
        }
    }
    runs
}

/// The cross product of `matrix`'s lists over `base`: one table per run, plus the keys that vary.
fn expand(base: &toml::Table, matrix: &toml::Table) -> (Vec<toml::Table>, Vec<String>) {
    let mut runs = vec![base.clone()];
    let mut varying = Vec::new();
    for (key, value) in matrix {
        let values = match value {
            toml::Value::Array(items) => items.clone(),
            v => vec![v.clone()],
        };
        if values.len() > 1 && key != "seed" {
            varying.push(key.clone());
        }
        runs = runs
            .into_iter()
            .flat_map(|run| {
                values.iter().map(move |v| {
                    let mut r = run.clone();
                    r.insert(key.clone(), v.clone());
                    r
                })
            })
            .collect();
    }
    (runs, varying)
}

fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A run's label: its values of the group's varying keys.
fn label(table: &toml::Table, varying: &[String]) -> String {
    if varying.is_empty() {
        return table.get("algo").map_or("run".into(), show);
    }
    varying
        .iter()
        .map(|k| format!("{k}={}", table.get(k).map_or(String::new(), show)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// FNV-1a of the configuration's TOML: the run directory's name.
fn run_id(cfg: &TrainConfig) -> Result<String, TrainError> {
    let mut c = cfg.clone();
    c.out = PathBuf::new();
    c.quiet = true;
    let text = toml::to_string(&c).map_err(|e| TrainError::Config(e.to_string()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

/// Runs (or reads back) every run of the experiment and writes the outputs.
pub fn run(args: &ExperimentArgs) -> Result<Vec<RunResult>, TrainError> {
    let file = load(&args.file)?;
    let out = args.out.clone().unwrap_or_else(|| file.out.clone());
    let report = args
        .report
        .clone()
        .or_else(|| file.report.clone())
        .unwrap_or_else(|| out.join("results.md"));
    // Expand and validate everything before the first run.
    let mut planned = Vec::new();
    for g in &file.group {
        for (t, run_label) in expand_group(&file.base, &g.variant, &g.matrix) {
            let mut cfg: TrainConfig = toml::Value::Table(t.clone())
                .try_into()
                .map_err(|e| cfg_err(&args.file, format!("group '{}': {e}", g.name)))?;
            if args.train_subset.is_some() {
                cfg.train_subset = args.train_subset;
            }
            if args.test_subset.is_some() {
                cfg.test_subset = args.test_subset;
            }
            cfg.quiet = true;
            let id = run_id(&cfg)?;
            cfg.out = out.join("runs").join(&id);
            cfg.clone()
                .validate()
                .map_err(|e| cfg_err(&args.file, format!("group '{}': {e}", g.name)))?;
            planned.push((g.name.clone(), run_label, cfg));
        }
    }
    std::fs::create_dir_all(out.join("runs"))
        .map_err(|e| TrainError::Output(format!("cannot create {}: {e}", out.display())))?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(planned.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} runs  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut results = Vec::new();
    for (group, label, cfg) in planned {
        bar.set_message(format!("{group}: {label} seed {}", cfg.seed));
        let times = if cfg.cluster.is_some() {
            "cluster.json"
        } else {
            "accounting.json"
        };
        let done = cfg.out.join("summary.json").exists() && cfg.out.join(times).exists();
        if !done {
            let resolved = cfg.clone().validate()?;
            crate::train::train_accounted(&resolved).map_err(|e| {
                TrainError::Node(format!("run {} ({group}: {label}): {e}", cfg.out.display()))
            })?;
        }
        results.push(read_run(&group, &label, cfg)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    write_csv(&out, &results)?;
    let plots = plot_groups(&out, &file, &results)?;
    write_report(&report, &file, args, &out, &results, &plots)?;
    Ok(results)
}

/// Reads a finished run's summary, metrics and accounting back.
fn read_run(group: &str, label: &str, config: TrainConfig) -> Result<RunResult, TrainError> {
    let dir = config.out.clone();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| TrainError::Output(format!("{}/{name}: {e}", dir.display())))
    };
    let bad = |name: &str, e: &dyn std::fmt::Display| {
        TrainError::Output(format!("{}/{name} is malformed: {e}", dir.display()))
    };
    let summary: serde_json::Value =
        serde_json::from_str(&read("summary.json")?).map_err(|e| bad("summary.json", &e))?;
    let num = |k: &str| summary.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    #[derive(Deserialize)]
    struct Epoch {
        modelled_seconds: Vec<(String, f64)>,
        nodes: Vec<NodeAccountRead>,
    }
    #[derive(Deserialize)]
    struct NodeAccountRead {
        compute_seconds: f64,
        wait_seconds: f64,
    }
    let emulated = config.cluster.is_some();
    let accounting: Vec<Epoch> = if emulated {
        Vec::new()
    } else {
        serde_json::from_str(&read("accounting.json")?).map_err(|e| bad("accounting.json", &e))?
    };
    let metrics = read("metrics.csv")?;
    let mut curve = Vec::new();
    let mut virtual_seconds = Vec::new();
    let no_accounting = Epoch {
        modelled_seconds: Vec::new(),
        nodes: Vec::new(),
    };
    let accounts = accounting
        .iter()
        .map(Some)
        .chain(std::iter::repeat(None))
        .take(if emulated {
            usize::MAX
        } else {
            accounting.len()
        });
    for (line, acc) in metrics.lines().skip(1).zip(accounts) {
        let acc = acc.unwrap_or(&no_accounting);
        let f: Vec<&str> = line.split(',').collect();
        let (Some(epoch), Some(accuracy), Some(seconds), Some(bytes)) = (
            f.first().and_then(|v| v.parse().ok()),
            f.get(3).and_then(|v| v.parse().ok()),
            f.get(4).and_then(|v| v.parse::<f64>().ok()),
            f.get(5).and_then(|v| v.parse().ok()),
        ) else {
            return Err(bad("metrics.csv", &line));
        };
        if emulated {
            virtual_seconds.push(seconds);
        }
        let times = NETWORKS
            .iter()
            .map(|n| {
                acc.modelled_seconds
                    .iter()
                    .find(|(name, _)| name == n.name)
                    .map_or(f64::NAN, |(_, s)| *s)
            })
            .collect();
        curve.push((epoch, accuracy, bytes, times));
    }
    let last = accounting.last().map(|e| &e.nodes[..]).unwrap_or(&[]);
    let k = last.len().max(1) as f64;
    Ok(RunResult {
        group: group.to_string(),
        label: label.to_string(),
        accuracy: num("final_test_accuracy"),
        node_accuracy: num("mean_node_test_accuracy"),
        bytes: summary
            .get("bytes_sent_total")
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
        train_seconds: num("train_seconds"),
        compute_wait: (
            last.iter().map(|a| a.compute_seconds).sum::<f64>() / k,
            last.iter().map(|a| a.wait_seconds).sum::<f64>() / k,
        ),
        curve,
        virtual_seconds,
        config,
        dir,
    })
}

fn write_csv(out: &Path, results: &[RunResult]) -> Result<(), TrainError> {
    let io = |p: &Path, e: std::io::Error| {
        TrainError::Output(format!("cannot write {}: {e}", p.display()))
    };
    let mut csv = String::from(
        "group,label,algo,nodes,topology,local_steps,interaction,quant,partition,epochs,lr,seed,\
         final_test_accuracy,mean_node_test_accuracy,bytes_sent_total,bits_sent_per_node,\
         train_seconds,compute_seconds_per_node,wait_seconds_per_node",
    );
    for n in NETWORKS {
        let _ = write!(csv, ",modelled_seconds_{}", n.name);
    }
    csv.push_str(",virtual_seconds,run_dir\n");
    let mut curves = String::from("group,label,seed,epoch,test_accuracy,bytes_sent_total");
    for n in NETWORKS {
        let _ = write!(curves, ",modelled_seconds_{}", n.name);
    }
    curves.push_str(",virtual_seconds\n");
    for r in results {
        let c = &r.config;
        let _ = write!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{},{},{:.3},{:.3},{:.3}",
            r.group,
            r.label,
            c.algo,
            c.nodes,
            c.topology,
            c.local_steps,
            c.interaction,
            c.quant,
            c.partition,
            c.epochs,
            c.lr,
            c.seed,
            r.accuracy,
            r.node_accuracy,
            r.bytes,
            8 * r.bytes / c.nodes.max(1) as u64,
            r.train_seconds,
            r.compute_wait.0,
            r.compute_wait.1
        );
        for k in 0..NETWORKS.len() {
            let _ = write!(csv, ",{:.4}", r.modelled(k));
        }
        let end = r
            .virtual_seconds
            .last()
            .map_or(String::new(), |t| format!("{t:.6}"));
        let _ = writeln!(csv, ",{end},{}", r.dir.display());
        for (k, (epoch, acc, bytes, times)) in r.curve.iter().enumerate() {
            let _ = write!(
                curves,
                "{},{},{},{epoch},{acc:.6},{bytes}",
                r.group, r.label, c.seed
            );
            for k in 0..NETWORKS.len() {
                match times.get(k) {
                    Some(t) => {
                        let _ = write!(curves, ",{t:.4}");
                    }
                    None => curves.push(','),
                }
            }
            match r.virtual_seconds.get(k) {
                Some(t) => {
                    let _ = writeln!(curves, ",{t:.6}");
                }
                None => curves.push_str(",\n"),
            }
        }
    }
    let p = out.join("results.csv");
    std::fs::write(&p, csv).map_err(|e| io(&p, e))?;
    let p = out.join("curves.csv");
    std::fs::write(&p, curves).map_err(|e| io(&p, e))
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n.max(1.0);
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The runs of one group, by label in first-seen order.
fn by_label<'a>(results: &'a [RunResult], group: &str) -> Vec<(String, Vec<&'a RunResult>)> {
    let mut order: Vec<(String, Vec<&RunResult>)> = Vec::new();
    for r in results.iter().filter(|r| r.group == group) {
        match order.iter_mut().find(|(l, _)| *l == r.label) {
            Some((_, v)) => v.push(r),
            None => order.push((r.label.clone(), vec![r])),
        }
    }
    order
}

/// Mean curve over seeds with min/max band, against `x` of each epoch.
fn seed_series(label: &str, runs: &[&RunResult], x: impl Fn(&RunResult, usize) -> f64) -> Series {
    let epochs = runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
    let mut s = Series {
        label: label.to_string(),
        ..Series::default()
    };
    for e in 0..epochs {
        let xs: Vec<f64> = runs.iter().map(|r| x(r, e)).collect();
        let ys: Vec<f64> = runs.iter().map(|r| 100.0 * r.curve[e].1).collect();
        let xm = mean_std(&xs).0;
        s.points.push((xm, mean_std(&ys).0));
        s.band.push((
            xm,
            ys.iter().copied().fold(f64::INFINITY, f64::min),
            ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ));
    }
    s
}

/// Draws each group's three plots; returns `(group, [file names])`.
fn plot_groups(
    out: &Path,
    file: &ExperimentFile,
    results: &[RunResult],
) -> Result<Vec<(String, Vec<String>)>, TrainError> {
    let ten_gbe = NETWORKS.len() - 1;
    let mut all = Vec::new();
    for g in &file.group {
        let labels = by_label(results, &g.name);
        if labels.is_empty() {
            continue;
        }
        if virtual_time::is_emulated(&labels) {
            all.push((g.name.clone(), virtual_time::plot_group(out, g, &labels)?));
            continue;
        }
        let title = g.title.clone().unwrap_or_else(|| g.name.clone());
        let series = |x: &dyn Fn(&RunResult, usize) -> f64| -> Vec<Series> {
            labels
                .iter()
                .map(|(l, runs)| seed_series(l, runs, x))
                .collect()
        };
        let specs: [(&str, String, &str, bool, Vec<Series>); 3] = [
            (
                "epochs",
                format!("{title}: test accuracy by epoch"),
                "epoch",
                false,
                series(&|r, e| r.curve[e].0 as f64),
            ),
            (
                "bits",
                format!("{title}: test accuracy by bits sent"),
                "bits sent per node",
                true,
                series(&|r, e| r.bits_per_node(r.curve[e].2)),
            ),
            (
                "time",
                format!(
                    "{title}: test accuracy by modelled time ({})",
                    NETWORKS[ten_gbe].name
                ),
                "modelled seconds on a cluster",
                false,
                series(&|r, e| r.curve[e].3[ten_gbe]),
            ),
        ];
        all.push((g.name.clone(), accuracy_charts(out, &g.name, specs)?));
    }
    Ok(all)
}

/// One chart of test accuracy per `(suffix, title, x label, log x, series)`, written as
/// `OUT/GROUP-SUFFIX.png`; returns the file names.
fn accuracy_charts(
    out: &Path,
    group: &str,
    specs: impl IntoIterator<Item = (&'static str, String, &'static str, bool, Vec<Series>)>,
) -> Result<Vec<String>, TrainError> {
    let mut files = Vec::new();
    for (suffix, title, x_label, log_x, series) in specs {
        let name = format!("{group}-{suffix}.png");
        line_chart(
            &out.join(&name),
            &Chart {
                title: &title,
                x_label,
                y_label: "test accuracy of the averaged model (%)",
                log_x,
                log_y: false,
            },
            &series,
        )?;
        files.push(name);
    }
    Ok(files)
}

/// Links a group's plots into the report.
fn link_plots(
    md: &mut String,
    report: &Path,
    out: &Path,
    plots: &[(String, Vec<String>)],
    group: &str,
) {
    if let Some((_, files)) = plots.iter().find(|(name, _)| name == group) {
        for f in files {
            let _ = writeln!(md, "![{f}]({})", relative(report, &out.join(f)));
        }
        md.push('\n');
    }
}

fn human_bits(bits: f64) -> String {
    crate::report::human_amount(bits, "bit")
}

/// A path to `target` relative to the directory of `from` (both relative to the same root), for
/// links in the report.
fn relative(from: &Path, target: &Path) -> String {
    let base = from.parent().unwrap_or(Path::new(""));
    let (b, t): (Vec<_>, Vec<_>) = (base.components().collect(), target.components().collect());
    let common = b.iter().zip(&t).take_while(|(x, y)| x == y).count();
    let mut p = PathBuf::new();
    for _ in common..b.len() {
        p.push("..");
    }
    for c in &t[common..] {
        p.push(c);
    }
    p.display().to_string()
}

fn write_report(
    report: &Path,
    file: &ExperimentFile,
    args: &ExperimentArgs,
    out: &Path,
    results: &[RunResult],
    plots: &[(String, Vec<String>)],
) -> Result<(), TrainError> {
    let ib = 0;
    let ten = NETWORKS.len() - 1;
    let mut md = format!("# {}\n\n", file.title);
    let _ = writeln!(
        md,
        "Generated by `swarm experiment {}`{}{} (resumable: finished runs are read back from \
         `{}/runs/`). Raw numbers: [`results.csv`]({}) (one row per run), [`curves.csv`]({}) (one \
         row per run and epoch).\n",
        args.file.display(),
        args.train_subset
            .map_or(String::new(), |k| format!(" --train-subset {k}")),
        args.test_subset
            .map_or(String::new(), |k| format!(" --test-subset {k}")),
        out.display(),
        relative(report, &out.join("results.csv")),
        relative(report, &out.join("curves.csv")),
    );
    if !file.notes.trim().is_empty() {
        let _ = writeln!(md, "{}\n", file.notes.trim());
    }
    let base: Vec<String> = file
        .base
        .iter()
        .map(|(k, v)| format!("`{k} = {}`", show(v)))
        .collect();
    let _ = writeln!(md, "Settings shared by every run: {}.\n", base.join(", "));
    let _ = writeln!(
        md,
        "Columns: test accuracy of the nodes' averaged model after the last epoch, mean ± standard \
         deviation over seeds [min, max]; bits sent per node over the whole run; modelled \
         end-to-end time on a cluster ({}: latency + bytes/bandwidth per message, replayed from \
         each node's measured CPU time and traffic; see `crates/trainer/src/netmodel.rs`); \
         measured training seconds on this 2-core machine (all nodes sharing it).\n",
        NETWORKS
            .iter()
            .map(|n| format!(
                "{} = {:.0} us, {:.0} Gb/s",
                n.name,
                n.latency_seconds * 1e6,
                n.bits_per_second / 1e9
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for g in &file.group {
        let labels = by_label(results, &g.name);
        if labels.is_empty() {
            continue;
        }
        let _ = writeln!(
            md,
            "## {}\n",
            g.title.clone().unwrap_or_else(|| g.name.clone())
        );
        let fixed: Vec<String> = g
            .matrix
            .iter()
            .filter(|(k, v)| !matches!(v, toml::Value::Array(a) if a.len() > 1) || *k == "seed")
            .map(|(k, v)| format!("`{k} = {}`", show(v)))
            .collect();
        if !fixed.is_empty() {
            let _ = writeln!(md, "Group settings: {}.\n", fixed.join(", "));
        }
        // The reference row: the label whose runs match every key of `reference`.
        let reference = labels.iter().find(|(_, runs)| {
            !g.reference.is_empty()
                && g.reference.iter().all(|(k, v)| {
                    let cfg = toml::Value::try_from(&runs[0].config).ok();
                    cfg.and_then(|c| c.get(k).cloned()).as_ref() == Some(v)
                })
        });
        if virtual_time::is_emulated(&labels) {
            virtual_time::write_group(&mut md, g, &labels, reference.map(|(l, _)| l.as_str()));
            link_plots(&mut md, report, out, plots, &g.name);
            continue;
        }
        let reference = reference.map(|(_, runs)| {
            (
                mean_std(&runs.iter().map(|r| r.accuracy).collect::<Vec<_>>()).0,
                mean_std(&runs.iter().map(|r| r.bytes as f64).collect::<Vec<_>>()).0,
            )
        });
        let _ = write!(
            md,
            "| run | seeds | test accuracy (%) | bits sent / node | modelled time {} | modelled time {} | measured train s |",
            NETWORKS[ten].name, NETWORKS[ib].name
        );
        if reference.is_some() {
            md.push_str(" vs reference: accuracy (points) | bytes |");
        }
        md.push('\n');
        md.push_str("|---|---|---|---|---|---|---|");
        if reference.is_some() {
            md.push_str("---|---|");
        }
        md.push('\n');
        for (label, runs) in &labels {
            let acc: Vec<f64> = runs.iter().map(|r| 100.0 * r.accuracy).collect();
            let (m, s) = mean_std(&acc);
            let lo = acc.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = acc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let bits = RunResult::mean_bits_per_node(runs);
            let t = |k: usize| mean_std(&runs.iter().map(|r| r.modelled(k)).collect::<Vec<_>>()).0;
            let train = mean_std(&runs.iter().map(|r| r.train_seconds).collect::<Vec<_>>()).0;
            let _ = write!(
                md,
                "| {label} | {} | {m:.2} ± {s:.2} [{lo:.2}, {hi:.2}] | {} | {:.1} s | {:.1} s | {train:.1} |",
                runs.len(),
                human_bits(bits),
                t(ten),
                t(ib),
            );
            if let Some((ref_acc, ref_bytes)) = reference {
                let bytes = mean_std(&runs.iter().map(|r| r.bytes as f64).collect::<Vec<_>>()).0;
                let _ = write!(
                    md,
                    " {:+.2} | {:.2}x |",
                    m - 100.0 * ref_acc,
                    bytes / ref_bytes.max(1.0)
                );
            }
            md.push('\n');
        }
        md.push('\n');
        link_plots(&mut md, report, out, plots, &g.name);
    }
    if let Some(dir) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| TrainError::Output(format!("cannot create {}: {e}", dir.display())))?;
    }
    let existing = std::fs::read_to_string(report).unwrap_or_default();
    let text = match &file.section {
        Some(name) => virtual_time::splice_section(&existing, name, &md),
        None => {
            // Sections other experiments wrote into this file stay, after the new text.
            let mut text = md;
            for section in virtual_time::marked_sections(&existing) {
                let _ = write!(text, "\n{section}\n");
            }
            text
        }
    };
    std::fs::write(report, text)
        .map_err(|e| TrainError::Output(format!("cannot write {}: {e}", report.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"
title = "tiny"
out = "OUT"
[base]
nodes = 2
epochs = 2
batch_size = 25
[[group]]
name = "h"
reference = { local_steps = "1" }
[group.matrix]
algo = "swarm"
local_steps = ["1", "4"]
seed = [1, 2]
[[group]]
name = "base"
[group.matrix]
algo = ["allreduce", "localsgd"]
seed = 1
"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("exp.toml");
        let out = dir.join("out");
        std::fs::write(&path, text.replace("OUT", &out.display().to_string())).expect("write");
        path
    }

    fn args(file: PathBuf) -> ExperimentArgs {
        ExperimentArgs {
            file,
            train_subset: Some(600),
            test_subset: Some(200),
            out: None,
            report: None,
            quiet: true,
        }
    }

    #[test]
    fn runs_the_matrix_writes_every_output_and_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = args(write(dir.path(), TINY));
        let results = run(&a).expect("experiment");
        assert_eq!(results.len(), 6);
        let out = dir.path().join("out");
        let csv = std::fs::read_to_string(out.join("results.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 7);
        assert!(csv
            .lines()
            .nth(1)
            .expect("row")
            .starts_with("h,local_steps=1,swarm,2,"));
        let curves = std::fs::read_to_string(out.join("curves.csv")).expect("curves");
        assert_eq!(curves.lines().count(), 1 + 6 * 2);
        let md = std::fs::read_to_string(out.join("results.md")).expect("report");
        assert!(md.contains("| local_steps=4 | 2 |"), "{md}");
        assert!(
            md.contains("+0.00 | 1.00x"),
            "reference row compares with itself: {md}"
        );
        for f in ["h-epochs.png", "h-bits.png", "h-time.png", "base-time.png"] {
            assert!(out.join(f).exists(), "{f}");
            assert!(md.contains(&format!("]({f})")), "{f} linked");
        }
        // Every run finished once: a second invocation reads them back without training.
        let stamp = |r: &RunResult| {
            std::fs::metadata(r.dir.join("summary.json"))
                .and_then(|m| m.modified())
                .expect("mtime")
        };
        let before: Vec<_> = results.iter().map(stamp).collect();
        let again = run(&a).expect("resume");
        let after: Vec<_> = again.iter().map(stamp).collect();
        assert_eq!(before, after);
        assert_eq!(
            results.iter().map(|r| r.accuracy).collect::<Vec<_>>(),
            again.iter().map(|r| r.accuracy).collect::<Vec<_>>()
        );
    }

    const EMULATED: &str = r#"
title = "emulated"
out = "OUT"
report = "OUT/report.md"
section = "cluster"
[base]
nodes = 4
epochs = 1
batch_size = 25
topology = "hypercube"
cluster = "10gbe,fixed:2,stragglers:0.25:4"
[[group]]
name = "c"
reference = { algo = "allreduce" }
target = 0.5
[group.matrix]
seed = [1, 2]
[[group.variant]]
name = "all-reduce"
algo = "allreduce"
lr = 0.5
[[group.variant]]
algo = "swarm"
lr = 0.3
"#;

    /// Emulated groups are timed in virtual seconds; their report is a section of the file.
    #[test]
    fn emulated_groups_report_time_to_target_in_a_section_of_the_report() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        std::fs::write(out.join("report.md"), "# Kept\n\ntext\n").expect("write");
        let results = run(&args(write(dir.path(), EMULATED))).expect("experiment");
        assert_eq!(results.len(), 4);
        for r in &results {
            assert_eq!(r.virtual_seconds.len(), r.curve.len());
            let times = &r.virtual_seconds;
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
            // Between the last evaluation below 50% and the first at or above it.
            let t = virtual_time::time_to(r, 0.5).expect("reaches 50%");
            let k = r.curve.iter().position(|c| c.1 >= 0.5).expect("crossing");
            assert!(
                t <= times[k] && (k == 0 || t > times[k - 1]),
                "{t} in {times:?}"
            );
        }
        // With a straggler, all-reduce waits for it at every step; SwarmSGD does not.
        let end = |algo: crate::config::Algo| {
            results
                .iter()
                .filter(|r| r.config.algo == algo)
                .map(|r| *r.virtual_seconds.last().expect("rows"))
                .fold(0.0, f64::max)
        };
        assert!(end(crate::config::Algo::Swarm) < end(crate::config::Algo::Allreduce) / 2.0);
        let md = std::fs::read_to_string(out.join("report.md")).expect("report");
        assert!(
            md.starts_with("# Kept\n\ntext\n\n<!-- begin cluster -->"),
            "{md}"
        );
        assert!(md.contains("| time to 50.0% |"), "{md}");
        assert!(
            md.contains("| all-reduce | 2 |") && md.contains(" 1.00x |"),
            "{md}"
        );
        assert!(md.contains("| algo=swarm lr=0.3 | 2 |"), "{md}");
        let allreduce = results
            .iter()
            .find(|r| r.config.algo == crate::config::Algo::Allreduce)
            .expect("all-reduce runs");
        assert_eq!(allreduce.config.lr, 0.5);
        assert!(md.contains("](c-virtual-time.png)"));
        assert!(out.join("c-virtual-time.png").exists());
        let curves = std::fs::read_to_string(out.join("curves.csv")).expect("curves");
        assert!(curves
            .lines()
            .next()
            .expect("header")
            .ends_with(",virtual_seconds"));
    }

    #[test]
    fn malformed_files_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (text, expected) in [
            (
                TINY.replace("local_steps = [", "local_stepz = ["),
                "local_stepz",
            ),
            (
                TINY.replace("algo = \"swarm\"", "algo = \"gossip\""),
                "gossip",
            ),
            (TINY.replace("title = \"tiny\"", ""), "title"),
            (TINY.replace("nodes = 2", "nodes = 0"), "nodes"),
            ("title = \"x\"\nout = \"o\"\n".to_string(), "[[group]]"),
            ("title = [\n".to_string(), "exp.toml"),
        ] {
            let e = run(&args(write(dir.path(), &text)))
                .expect_err(expected)
                .to_string();
            assert!(
                e.contains(expected) && e.contains("exp.toml"),
                "{expected}: {e}"
            );
        }
    }
}
