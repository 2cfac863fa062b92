//! `launcher`: starts SwarmSGD trainer ranks on this host (`local`), through Slurm (`slurm`),
//! Open MPI (`mpirun`) or ssh (`ssh`), streams their output prefixed `[rank K] `, propagates
//! failures and gathers every rank's `SWARM_SUMMARY` line into one `summary.json`.
//!
//! The contract with the ranks (what each rank gets and prints) is described in
//! `tools/launcher/README.md`.

mod cli;
mod error;
mod hostfile;
mod job;
mod pin;
mod run;
mod summary;
mod wrap;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;

use cli::{Cli, Common, LocalArgs, Mode, MpirunArgs, SlurmArgs, SshArgs};
use error::LauncherError;
use job::{Job, JOB_ID_VAR, JOB_SECRET_VAR, RANK_VARS};
use run::{Demux, Options, ProcSpec, StopReason};
use summary::JobSummary;

/// Exit code when `--timeout` stopped the job (as `timeout(1)`).
const EXIT_TIMEOUT: u8 = 124;

/// A job ready to run: its processes and how to report it.
struct Plan {
    mode: &'static str,
    job: Job,
    specs: Vec<ProcSpec>,
    world_size: u32,
    master: (String, u16),
}

fn timeout_arg(secs: Option<f64>, what: &str) -> Result<Option<Duration>, LauncherError> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(LauncherError::Invalid(format!(
            "{what} {s}: must be a positive number of seconds"
        ))),
    }
}

/// The variables every rank of every mode gets from the launcher's own environment.
fn job_env(job: &Job, addr: &str, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("MASTER_ADDR", addr.to_string()),
        ("MASTER_PORT", port.to_string()),
        (JOB_ID_VAR, job.id.to_string()),
        (JOB_SECRET_VAR, job.secret.clone()),
    ]
}

fn local_plan(args: &LocalArgs) -> Result<Plan, LauncherError> {
    let c = &args.common;
    let job = Job::generate()?;
    let addr = c.master_addr.clone().unwrap_or_else(|| "127.0.0.1".into());
    let port = match c.master_port {
        Some(p) => p,
        None => job::free_local_port()?,
    };
    let bindings = if args.pin {
        pin::probe_and_plan(args.n as usize)
    } else {
        None
    };
    let specs = (0..args.n)
        .map(|rank| {
            let mut cmd = Command::new(&c.command[0]);
            cmd.args(&c.command[1..])
                .envs(job_env(&job, &addr, port))
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", args.n.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", args.n.to_string());
            ProcSpec {
                name: format!("rank {rank}"),
                command: cmd,
                demux: Demux::Rank(rank),
                stdin_data: None,
                pin: bindings
                    .as_ref()
                    .and_then(|b| b.get(rank as usize).cloned()),
                missing_hint: "check the command after `--` (give a path or put it on PATH)".into(),
                scancel: None,
            }
        })
        .collect();
    Ok(Plan {
        mode: "local",
        job,
        specs,
        world_size: args.n,
        master: (addr, port),
    })
}

/// `sh -c SCRIPT swarm-rank COMMAND...` as arguments.
fn wrapped(script: String, command: &[String]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        wrap::WRAPPER_NAME.into(),
    ];
    v.extend(command.iter().map(OsString::from));
    v
}

fn slurm_plan(args: &SlurmArgs) -> Result<Plan, LauncherError> {
    let c = &args.common;
    let job = Job::generate()?;
    let port = c.master_port.unwrap_or_else(|| job.derived_port());
    let mut cmd = Command::new(&args.srun);
    cmd.arg("--label")
        .arg(format!("--ntasks={}", args.n))
        .arg(format!(
            "--kill-on-bad-exit={}",
            u8::from(c.kill_on_failure)
        ))
        .arg("--job-name=swarm");
    if let Some(nodes) = args.nodes {
        cmd.arg(format!("--nodes={nodes}"));
    }
    if let Some(p) = &args.partition {
        cmd.arg(format!("--partition={p}"));
    }
    cmd.args(&args.srun_args)
        .args(wrapped(wrap::slurm_script(), &c.command));
    for var in RANK_VARS {
        cmd.env_remove(var);
    }
    // Without --master-addr, the wrapper sets MASTER_ADDR to the step's first node.
    cmd.env_remove("MASTER_ADDR");
    let addr = c.master_addr.clone().unwrap_or_default();
    for (k, v) in job_env(&job, &addr, port) {
        if !v.is_empty() {
            cmd.env(k, v);
        }
    }
    // scancel from the same place as srun.
    let scancel = match std::path::Path::new(&args.srun).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("scancel"),
        _ => PathBuf::from("scancel"),
    };
    Ok(Plan {
        mode: "slurm",
        job,
        specs: vec![ProcSpec {
            name: "srun".into(),
            command: cmd,
            demux: Demux::SrunLabel,
            stdin_data: None,
            pin: None,
            missing_hint: "install Slurm (Debian: slurm-client, or slurm-wlm for a whole \
                           cluster) or run the ranks on this host with `launcher local`"
                .into(),
            scancel: Some(scancel),
        }],
        world_size: args.n,
        master: (
            if addr.is_empty() {
                "(rank 0's node)".into()
            } else {
                addr
            },
            port,
        ),
    })
}

fn running_as_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn mpirun_plan(args: &MpirunArgs) -> Result<Plan, LauncherError> {
    let c = &args.common;
    let job = Job::generate()?;
    let port = c.master_port.unwrap_or_else(|| job.derived_port());
    let addr = match (&c.master_addr, &args.hostfile) {
        (Some(a), _) => a.clone(),
        (None, Some(path)) => hostfile::read(path)?[0].name.clone(),
        (None, None) => "127.0.0.1".into(),
    };
    let mut cmd = Command::new(&args.mpirun);
    cmd.arg("-n").arg(args.n.to_string()).arg("--tag-output");
    if running_as_root() {
        cmd.arg("--allow-run-as-root");
    }
    if let Some(h) = &args.hostfile {
        cmd.arg("--hostfile").arg(h);
    }
    // Open MPI aborts the whole job when one process exits non-zero unless told otherwise.
    cmd.args([
        "--mca",
        "orte_abort_on_non_zero_status",
        if c.kill_on_failure { "1" } else { "0" },
    ]);
    for (k, v) in job_env(&job, &addr, port) {
        cmd.env(k, v).arg("-x").arg(k);
    }
    for var in RANK_VARS {
        cmd.env_remove(var);
    }
    cmd.args(&args.mpirun_args)
        .args(wrapped(wrap::mpirun_script(), &c.command));
    Ok(Plan {
        mode: "mpirun",
        job,
        specs: vec![ProcSpec {
            name: "mpirun".into(),
            command: cmd,
            demux: Demux::MpiTag,
            stdin_data: None,
            pin: None,
            missing_hint: "install Open MPI (Debian: openmpi-bin) or run the ranks on this \
                           host with `launcher local`"
                .into(),
            scancel: None,
        }],
        world_size: args.n,
        master: (addr, port),
    })
}

fn ssh_plan(args: &SshArgs) -> Result<Plan, LauncherError> {
    let c = &args.common;
    let hosts = hostfile::read(&args.hostfile)?;
    let placements = hostfile::place(&hosts, args.n)?;
    let job = Job::generate()?;
    let port = c.master_port.unwrap_or_else(|| job.derived_port());
    let addr = c
        .master_addr
        .clone()
        .unwrap_or_else(|| placements[0].host.clone());
    let workdir: PathBuf = match &args.workdir {
        Some(w) => w.clone(),
        None => std::env::current_dir()
            .map_err(|e| LauncherError::Io("reading the current directory".into(), e))?,
    };
    let workdir = workdir.to_str().map(str::to_owned).ok_or_else(|| {
        LauncherError::Invalid(format!("--workdir {} is not UTF-8", workdir.display()))
    })?;
    let script = wrap::ssh_script();
    let specs = placements
        .iter()
        .zip(0u32..)
        .map(|(p, rank)| {
            let mut remote = format!("cd {} && exec env", wrap::quote(&workdir));
            let vars = [
                ("RANK", rank.to_string()),
                ("WORLD_SIZE", args.n.to_string()),
                ("LOCAL_RANK", p.local_rank.to_string()),
                ("LOCAL_WORLD_SIZE", p.local_world_size.to_string()),
                ("MASTER_ADDR", addr.clone()),
                ("MASTER_PORT", port.to_string()),
                (JOB_ID_VAR, job.id.to_string()),
            ];
            for (k, v) in vars {
                remote.push(' ');
                remote.push_str(&wrap::quote(&format!("{k}={v}")));
            }
            remote.push_str(" sh -c ");
            remote.push_str(&wrap::quote(&script));
            remote.push(' ');
            remote.push_str(wrap::WRAPPER_NAME);
            for word in &c.command {
                remote.push(' ');
                remote.push_str(&wrap::quote(word));
            }
            let mut cmd = Command::new(&args.ssh);
            cmd.args(["-o", "BatchMode=yes", "-T"])
                .args(&args.ssh_args)
                .arg(&p.host)
                .arg(remote);
            ProcSpec {
                name: format!("rank {rank}"),
                command: cmd,
                demux: Demux::Rank(rank),
                // The secret goes over the encrypted channel, never on a command line.
                stdin_data: Some(format!("{}\n", job.secret).into_bytes()),
                pin: None,
                missing_hint: "install an ssh client (Debian: openssh-client) or run the \
                               ranks on this host with `launcher local`"
                    .into(),
                scancel: None,
            }
        })
        .collect();
    Ok(Plan {
        mode: "ssh",
        job,
        specs,
        world_size: args.n,
        master: (addr, port),
    })
}

fn launch(cli: Cli) -> Result<u8, LauncherError> {
    let (plan, common): (Plan, &Common) = match &cli.mode {
        Mode::Local(a) => (local_plan(a)?, &a.common),
        Mode::Slurm(a) => (slurm_plan(a)?, &a.common),
        Mode::Mpirun(a) => (mpirun_plan(a)?, &a.common),
        Mode::Ssh(a) => (ssh_plan(a)?, &a.common),
    };
    let opts = Options {
        world_size: plan.world_size,
        timeout: timeout_arg(common.timeout, "--timeout")?,
        grace: timeout_arg(Some(common.grace), "--grace")?.unwrap_or_default(),
        kill_on_failure: common.kill_on_failure,
    };
    eprintln!(
        "launcher: {} job {}: {} ranks, rendezvous at {}:{}",
        plan.mode, plan.job.id, plan.world_size, plan.master.0, plan.master.1
    );
    let outcome = run::run(plan.specs, opts)?;

    let failed_launchers: Vec<String> = outcome
        .processes
        .iter()
        .filter(|(_, s)| s.is_some_and(|s| !s.success()))
        .map(|(name, s)| match s {
            Some(s) => format!("{name} ended with {s}"),
            None => name.clone(),
        })
        .collect();
    let note = (plan.mode == "slurm" || plan.mode == "mpirun")
        .then(|| failed_launchers.join("; "))
        .filter(|s| !s.is_empty());
    let summary = JobSummary::gather(
        plan.mode,
        plan.job.id,
        &outcome.records,
        note.as_deref(),
        outcome.stopped.as_ref().map(ToString::to_string),
        outcome.wall_seconds,
    );
    summary.write(&common.summary)?;

    let failed = &summary.failed_ranks;
    if failed.is_empty() {
        eprintln!(
            "launcher: all {} ranks succeeded in {:.1} s; summary in {}",
            plan.world_size,
            outcome.wall_seconds,
            common.summary.display()
        );
    } else {
        let list: Vec<String> = failed
            .iter()
            .map(|f| format!("rank {} ({})", f.rank, f.reason))
            .collect();
        eprintln!(
            "launcher: {} of {} ranks failed: {}; summary in {}",
            failed.len(),
            plan.world_size,
            list.join(", "),
            common.summary.display()
        );
    }
    Ok(match outcome.stopped {
        Some(StopReason::Signal(sig)) => u8::try_from(128 + sig).unwrap_or(1),
        Some(StopReason::Timeout(_)) => EXIT_TIMEOUT,
        _ if !failed.is_empty() => 1,
        _ if note.is_some() => {
            eprintln!(
                "launcher: every rank succeeded but {}",
                note.unwrap_or_default()
            );
            1
        }
        _ => 0,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match launch(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("launcher: {e}");
            ExitCode::from(2)
        }
    }
}
