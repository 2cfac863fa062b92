//! Who am I in this job: rank, world size, local rank, where the store is, and the job's
//! credentials, read from the variables that launchers and schedulers set.

use crate::{JobAuth, RendezvousError, SECRET_LEN};

/// Which convention the job's variables followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (torchrun, `tools/launcher`).
    Torchrun,
    /// `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, `SLURM_JOB_NODELIST` (srun).
    Slurm,
    /// `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK` (Open MPI).
    OpenMpi,
    /// `PMI_RANK`, `PMI_SIZE` (MPICH, Intel MPI, other PMI launchers).
    Pmi,
}

impl std::fmt::Display for EnvSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnvSource::Torchrun => "torchrun-style variables",
            EnvSource::Slurm => "Slurm",
            EnvSource::OpenMpi => "Open MPI",
            EnvSource::Pmi => "PMI",
        })
    }
}

/// This process's place in a multi-process job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnv {
    /// Where the values came from.
    pub source: EnvSource,
    /// This process's rank, `0..world_size`.
    pub rank: usize,
    /// How many processes the job has.
    pub world_size: usize,
    /// This process's index among the job's processes on this host.
    pub local_rank: usize,
    /// Host of the store (rank 0 serves it).
    pub master_addr: String,
    /// Port of the store.
    pub master_port: u16,
    /// The job's hosts, when the scheduler lists them (Slurm); empty otherwise.
    pub hosts: Vec<String>,
    /// The job's credentials.
    pub auth: JobAuth,
}

/// Port used under Slurm when `MASTER_PORT` is not set: derived from the job id, so every rank of
/// a job agrees on it and concurrent jobs on one host rarely collide.
pub fn slurm_default_port(job_id: u64) -> u16 {
    20_000 + (job_id % 20_000) as u16
}

impl JobEnv {
    /// Reads the job from this process's environment.
    pub fn detect() -> Result<JobEnv, RendezvousError> {
        JobEnv::detect_from(|name| std::env::var(name).ok())
    }

    /// Reads the job from the variables `var` returns (`None` for unset), in this order: torchrun
    /// (`RANK` and `WORLD_SIZE`), Slurm (`SLURM_PROCID` and `SLURM_NTASKS`), Open MPI, PMI.
    /// Credentials come from `SWARM_JOB_ID` (else `SLURM_JOB_ID`, else 0) and `SWARM_JOB_SECRET`
    /// (64 hex digits, required).
    pub fn detect_from(var: impl Fn(&str) -> Option<String>) -> Result<JobEnv, RendezvousError> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let number = |name: &str| -> Result<Option<usize>, RendezvousError> {
            get(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        RendezvousError::Env(format!("{name}={v:?} is not a non-negative integer"))
                    })
                })
                .transpose()
        };
        let required_master = |source: EnvSource| -> Result<(String, u16), RendezvousError> {
            let addr = get("MASTER_ADDR").ok_or_else(|| {
                RendezvousError::Env(format!(
                    "{source} gives ranks but not the store's address: set MASTER_ADDR and \
                     MASTER_PORT (tools/launcher does), e.g. MASTER_ADDR=<host of rank 0>"
                ))
            })?;
            Ok((addr, port_var(&get)?.ok_or_else(|| missing_port(source))?))
        };

        let (source, rank, world_size, local_rank, master, hosts) =
            if let (Some(rank), Some(size)) = (number("RANK")?, number("WORLD_SIZE")?) {
                let master = required_master(EnvSource::Torchrun)?;
                let local = number("LOCAL_RANK")?.unwrap_or(0);
                (EnvSource::Torchrun, rank, size, local, master, Vec::new())
            } else if let (Some(rank), Some(size)) =
                (number("SLURM_PROCID")?, number("SLURM_NTASKS")?)
            {
                let nodelist = get("SLURM_JOB_NODELIST").or_else(|| get("SLURM_NODELIST"));
                let hosts = match &nodelist {
                    Some(list) => expand_nodelist(list)?,
                    None => Vec::new(),
                };
                let addr =
                    match get("MASTER_ADDR").or_else(|| hosts.first().cloned()) {
                        Some(a) => a,
                        None => return Err(RendezvousError::Env(
                            "Slurm gives neither SLURM_JOB_NODELIST nor MASTER_ADDR: cannot tell \
                             where rank 0 runs"
                                .into(),
                        )),
                    };
                let port = match port_var(&get)? {
                    Some(p) => p,
                    None => {
                        let job = number("SLURM_JOB_ID")?
                            .ok_or_else(|| missing_port(EnvSource::Slurm))?;
                        slurm_default_port(job as u64)
                    }
                };
                let local = number("SLURM_LOCALID")?.unwrap_or(0);
                (EnvSource::Slurm, rank, size, local, (addr, port), hosts)
            } else if let (Some(rank), Some(size)) = (
                number("OMPI_COMM_WORLD_RANK")?,
                number("OMPI_COMM_WORLD_SIZE")?,
            ) {
                let master = required_master(EnvSource::OpenMpi)?;
                let local = number("OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(0);
                (EnvSource::OpenMpi, rank, size, local, master, Vec::new())
            } else if let (Some(rank), Some(size)) = (number("PMI_RANK")?, number("PMI_SIZE")?) {
                let master = required_master(EnvSource::Pmi)?;
                let local = number("MPI_LOCALRANKID")?
                    .or(number("PMI_LOCAL_RANK")?)
                    .unwrap_or(0);
                (EnvSource::Pmi, rank, size, local, master, Vec::new())
            } else {
                return Err(RendezvousError::Env(
                    "not started as a multi-process job: none of RANK/WORLD_SIZE (torchrun, \
                     tools/launcher), SLURM_PROCID/SLURM_NTASKS, OMPI_COMM_WORLD_RANK/SIZE or \
                     PMI_RANK/PMI_SIZE is set; start the ranks with tools/launcher"
                        .into(),
                ));
            };
        if world_size == 0 || rank >= world_size {
            return Err(RendezvousError::Env(format!(
                "{source}: rank {rank} is not below the world size {world_size}"
            )));
        }
        let job = match get("SWARM_JOB_ID") {
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                RendezvousError::Env(format!("SWARM_JOB_ID={v:?} is not a non-negative integer"))
            })?,
            None => number("SLURM_JOB_ID")?.unwrap_or(0) as u64,
        };
        let secret_hex = get("SWARM_JOB_SECRET").ok_or_else(|| {
            RendezvousError::Env(
                "SWARM_JOB_SECRET is not set: every rank of the job needs the same secret of 64 \
                 hex digits (tools/launcher makes one; by hand: export \
                 SWARM_JOB_SECRET=$(openssl rand -hex 32))"
                    .into(),
            )
        })?;
        let secret = parse_secret(&secret_hex)?;
        Ok(JobEnv {
            source,
            rank,
            world_size,
            local_rank,
            master_addr: master.0,
            master_port: master.1,
            hosts,
            auth: JobAuth::new(job, secret),
        })
    }
}

fn missing_port(source: EnvSource) -> RendezvousError {
    RendezvousError::Env(format!(
        "{source} gives ranks but not the store's port: set MASTER_PORT (tools/launcher does)"
    ))
}

fn port_var(get: &impl Fn(&str) -> Option<String>) -> Result<Option<u16>, RendezvousError> {
    get("MASTER_PORT")
        .map(|v| match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(RendezvousError::Env(format!(
                "MASTER_PORT={v:?} is not a port number (1-65535)"
            ))),
        })
        .transpose()
}

/// Parses a secret of exactly 64 hex digits.
pub fn parse_secret(hex: &str) -> Result<[u8; SECRET_LEN], RendezvousError> {
    let hex = hex.trim();
    let bad = || {
        RendezvousError::Env(format!(
            "SWARM_JOB_SECRET must be {} hex digits, got {} characters{}",
            2 * SECRET_LEN,
            hex.len(),
            if hex.chars().all(|c| c.is_ascii_hexdigit()) {
                ""
            } else {
                " with non-hex characters"
            }
        ))
    };
    if hex.len() != 2 * SECRET_LEN || !hex.is_ascii() {
        return Err(bad());
    }
    let mut secret = [0u8; SECRET_LEN];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(secret)
}

/// Formats a secret as the 64 hex digits [`parse_secret`] reads.
pub fn format_secret(secret: &[u8; SECRET_LEN]) -> String {
    secret.iter().map(|b| format!("{b:02x}")).collect()
}

/// Expands a Slurm host list such as `node[01-03,7],login,rack[1-2]-n[1-2]` into host names, in
/// order, keeping zero padding (`node01`).
pub fn expand_nodelist(list: &str) -> Result<Vec<String>, RendezvousError> {
    let bad = |why: &str| RendezvousError::Env(format!("host list {list:?}: {why}"));
    let mut hosts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes = list.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'[' => depth += 1,
            b']' => depth -= 1,
            b',' if depth == 0 => {
                expand_one(&list[start..i], &mut hosts).map_err(|w| bad(&w))?;
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(bad("unbalanced or nested brackets"));
        }
    }
    if depth != 0 {
        return Err(bad("unbalanced brackets"));
    }
    expand_one(&list[start..], &mut hosts).map_err(|w| bad(&w))?;
    if hosts.len() > 1_000_000 {
        return Err(bad("expands to more than a million hosts"));
    }
    Ok(hosts)
}

/// Expands one comma-free (outside brackets) item with any number of bracket groups.
fn expand_one(item: &str, out: &mut Vec<String>) -> Result<(), String> {
    let item = item.trim();
    if item.is_empty() {
        return Err("empty host name".into());
    }
    let Some(open) = item.find('[') else {
        out.push(item.to_string());
        return Ok(());
    };
    let close = item[open..]
        .find(']')
        .map(|c| open + c)
        .ok_or("unbalanced brackets")?;
    let (prefix, ranges, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    let mut suffixes = Vec::new();
    if rest.is_empty() {
        suffixes.push(String::new());
    } else if rest.contains('[') {
        expand_one(&format!("x{rest}"), &mut suffixes)?;
        for s in &mut suffixes {
            s.remove(0);
        }
    } else {
        suffixes.push(rest.to_string());
    }
    for range in ranges.split(',') {
        let range = range.trim();
        let (lo, hi) = match range.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (range, range),
        };
        let parse = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 9 {
                Err(format!("{range:?} is not a number or a range of numbers"))
            } else {
                s.parse::<u64>().map_err(|e| e.to_string())
            }
        };
        let (a, b) = (parse(lo)?, parse(hi)?);
        if a > b {
            return Err(format!("range {range:?} runs backwards"));
        }
        if b - a > 1_000_000 {
            return Err(format!("range {range:?} is too long"));
        }
        let width = lo.len();
        for n in a..=b {
            for s in &suffixes {
                out.push(format!("{prefix}{n:0width$}{s}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn nodelists_expand_like_slurm() {
        assert_eq!(expand_nodelist("a").unwrap(), ["a"]);
        assert_eq!(
            expand_nodelist("node[01-03,7],login").unwrap(),
            ["node01", "node02", "node03", "node7", "login"]
        );
        assert_eq!(
            expand_nodelist("r[1-2]-n[08-09]").unwrap(),
            ["r1-n08", "r1-n09", "r2-n08", "r2-n09"]
        );
        assert_eq!(
            expand_nodelist("gpu[9-11]").unwrap(),
            ["gpu9", "gpu10", "gpu11"]
        );
        for bad in [
            "n[1-",
            "n[3-1]",
            "n[a-b]",
            "",
            "a,,b",
            "n[[1]]",
            "n[1-99999999999]",
        ] {
            assert!(expand_nodelist(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn torchrun_variables_come_first() {
        let e = JobEnv::detect_from(env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "9"),
            ("SWARM_JOB_ID", "77"),
            ("SWARM_JOB_SECRET", SECRET),
        ]))
        .unwrap();
        assert_eq!(e.source, EnvSource::Torchrun);
        assert_eq!((e.rank, e.world_size, e.local_rank), (3, 4, 1));
        assert_eq!((e.master_addr.as_str(), e.master_port), ("10.0.0.1", 29500));
        assert_eq!(e.auth.job, 77);
        assert_eq!(format_secret(&e.auth.secret), SECRET);
    }

    #[test]
    fn slurm_derives_master_from_the_nodelist_and_job() {
        let e = JobEnv::detect_from(env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "cn[003-006]"),
            ("SLURM_JOB_ID", "123456"),
            ("SWARM_JOB_SECRET", SECRET),
        ]))
        .unwrap();
        assert_eq!(e.source, EnvSource::Slurm);
        assert_eq!((e.rank, e.world_size, e.local_rank), (5, 8, 1));
        assert_eq!(e.hosts, ["cn003", "cn004", "cn005", "cn006"]);
        assert_eq!(e.master_addr, "cn003");
        assert_eq!(e.master_port, slurm_default_port(123456));
        assert_eq!(e.auth.job, 123456);
    }

    #[test]
    fn mpi_and_pmi_need_an_explicit_master() {
        let base = [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")];
        let err = JobEnv::detect_from(env(&base)).unwrap_err().to_string();
        assert!(err.contains("MASTER_ADDR"), "{err}");
        let mut full = base.to_vec();
        full.extend([
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1234"),
            ("SWARM_JOB_SECRET", SECRET),
        ]);
        let e = JobEnv::detect_from(env(&full)).unwrap();
        assert_eq!((e.source, e.rank, e.local_rank), (EnvSource::OpenMpi, 1, 1));
        let e = JobEnv::detect_from(env(&[
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "3"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1234"),
            ("SWARM_JOB_SECRET", SECRET),
        ]))
        .unwrap();
        assert_eq!((e.source, e.world_size), (EnvSource::Pmi, 3));
    }

    #[test]
    fn bad_values_are_named() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[], "tools/launcher"),
            (&[("RANK", "x"), ("WORLD_SIZE", "2")], "RANK=\"x\""),
            (
                &[
                    ("RANK", "2"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "1"),
                ],
                "not below the world size",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "0"),
                ],
                "MASTER_PORT",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "1"),
                ],
                "SWARM_JOB_SECRET is not set",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "1"),
                    ("SWARM_JOB_SECRET", "abc"),
                ],
                "64 hex digits",
            ),
        ];
        for (vars, expected) in cases {
            let err = JobEnv::detect_from(env(vars)).unwrap_err().to_string();
            assert!(err.contains(expected), "{vars:?}: {err}");
        }
    }
}
