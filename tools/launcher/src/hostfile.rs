//! Hostfiles: one `host [slots=K]` per line, `#` starts a comment.

use std::path::Path;

use crate::error::LauncherError;

/// One host of a hostfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Host name or address, as given.
    pub name: String,
    /// Ranks it may run (default 1).
    pub slots: u32,
}

/// Reads and parses a hostfile.
pub fn read(path: &Path) -> Result<Vec<Host>, LauncherError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LauncherError::Io(format!("reading hostfile {}", path.display()), e))?;
    parse(&text, path)
}

/// Parses hostfile text; `path` only names the file in errors. Accepts Open MPI's
/// `max_slots=K` (ignored) beside `slots=K`; rejects empty files and unknown keys.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Host>, LauncherError> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |reason: String| LauncherError::Hostfile {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default();
        if name.contains('=') {
            return Err(err(format!("`{name}` is not a host name")));
        }
        let mut slots = 1;
        for word in words {
            match word.split_once('=') {
                Some(("slots", v)) => {
                    slots = v.parse::<u32>().ok().filter(|&s| s > 0).ok_or_else(|| {
                        err(format!("`{word}`: slots must be a positive integer"))
                    })?;
                }
                Some(("max_slots", v)) if v.parse::<u32>().is_ok() => {}
                _ => return Err(err(format!("unexpected `{word}`"))),
            }
        }
        hosts.push(Host {
            name: name.to_string(),
            slots,
        });
    }
    if hosts.is_empty() {
        return Err(LauncherError::Invalid(format!(
            "hostfile {} lists no hosts",
            path.display()
        )));
    }
    Ok(hosts)
}

/// Where one rank runs in ssh mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Host name.
    pub host: String,
    /// Index among the ranks on the same host.
    pub local_rank: u32,
    /// Number of ranks on the same host.
    pub local_world_size: u32,
}

/// Places `n` ranks by filling each host's slots in hostfile order (a host listed twice gets
/// both entries' slots). Errors when the hostfile has fewer than `n` slots.
pub fn place(hosts: &[Host], n: u32) -> Result<Vec<Placement>, LauncherError> {
    let total: u64 = hosts.iter().map(|h| u64::from(h.slots)).sum();
    if total < u64::from(n) {
        return Err(LauncherError::Invalid(format!(
            "-n {n} ranks but the hostfile has only {total} slots; add hosts or `slots=K`"
        )));
    }
    let mut names: Vec<&str> = Vec::with_capacity(n as usize);
    'fill: for h in hosts {
        for _ in 0..h.slots {
            if names.len() == n as usize {
                break 'fill;
            }
            names.push(&h.name);
        }
    }
    let placements = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let local_rank = names[..i].iter().filter(|m| *m == name).count();
            let local_world_size = names.iter().filter(|m| *m == name).count();
            Placement {
                host: name.to_string(),
                local_rank: u32::try_from(local_rank).unwrap_or(u32::MAX),
                local_world_size: u32::try_from(local_world_size).unwrap_or(u32::MAX),
            }
        })
        .collect();
    Ok(placements)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_places() {
        let text = "# cluster\nnode1 slots=2\n\nnode2   # one slot\nnode1 max_slots=4 slots=1\n";
        let hosts = parse(text, Path::new("hf")).unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0].slots, 2);
        assert_eq!(hosts[1].slots, 1);
        let p = place(&hosts, 4).unwrap();
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.host.as_str(), p.local_rank, p.local_world_size))
            .collect();
        assert_eq!(
            got,
            [
                ("node1", 0, 3),
                ("node1", 1, 3),
                ("node2", 0, 1),
                ("node1", 2, 3)
            ]
        );
        assert!(place(&hosts, 5).is_err());
    }

    #[test]
    fn bad_lines_name_the_line() {
        let e = parse("a\nb slots=zero\n", Path::new("hf")).unwrap_err();
        assert!(e.to_string().starts_with("hf:2:"), "{e}");
        let e = parse("a cpus=3\n", Path::new("hf")).unwrap_err();
        assert!(e.to_string().contains("hf:1: unexpected `cpus=3`"), "{e}");
        let e = parse("slots=2\n", Path::new("hf")).unwrap_err();
        assert!(e.to_string().contains("hf:1:"), "{e}");
        assert!(parse("# nothing\n", Path::new("hf")).is_err());
    }
}
