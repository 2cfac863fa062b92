//! The report of groups of emulated runs (`--cluster`): time to a target accuracy and accuracy at a
//! time budget, in virtual seconds, and plots against virtual time.

use std::fmt::Write as _;
use std::path::Path;

use super::{accuracy_charts, human_bits, mean_std, seed_series, Group, RunResult};
use crate::TrainError;

/// Whether a group's runs are emulated.
pub(super) fn is_emulated(runs: &[(String, Vec<&RunResult>)]) -> bool {
    runs.iter()
        .flat_map(|(_, r)| r.iter())
        .any(|r| r.config.cluster.is_some())
}

/// The virtual time at which `run` first reached `target` accuracy, if it did: interpolated
/// linearly between the evaluation before the crossing and the first one at or above `target`
/// (that evaluation's time when it is the first).
pub(super) fn time_to(run: &RunResult, target: f64) -> Option<f64> {
    let points: Vec<(f64, f64)> = run
        .virtual_seconds
        .iter()
        .zip(&run.curve)
        .map(|(t, (_, acc, _, _))| (*t, *acc))
        .collect();
    let k = points.iter().position(|&(_, acc)| acc >= target)?;
    let (t1, a1) = points[k];
    Some(match k.checked_sub(1).map(|j| points[j]) {
        Some((t0, a0)) if a1 > a0 => t0 + (target - a0) / (a1 - a0) * (t1 - t0),
        _ => t1,
    })
}

/// The accuracy of `run` at virtual time `budget`: its last evaluation at or before it (its first
/// if none was).
pub(super) fn accuracy_at(run: &RunResult, budget: f64) -> f64 {
    run.curve
        .iter()
        .zip(&run.virtual_seconds)
        .take_while(|(_, t)| **t <= budget + 1e-12)
        .last()
        .or_else(|| run.curve.iter().zip(&run.virtual_seconds).next())
        .map_or(f64::NAN, |((_, acc, _, _), _)| *acc)
}

fn end_seconds(run: &RunResult) -> f64 {
    run.virtual_seconds.last().copied().unwrap_or(f64::NAN)
}

/// The group's target accuracy (default 0.8) and budget (default: the earliest end of its runs).
pub(super) fn target_and_budget(g: &Group, runs: &[(String, Vec<&RunResult>)]) -> (f64, f64) {
    let budget = g.budget_seconds.unwrap_or_else(|| {
        runs.iter()
            .flat_map(|(_, r)| r.iter())
            .map(|r| end_seconds(r))
            .fold(f64::INFINITY, f64::min)
    });
    (g.target.unwrap_or(0.8), budget)
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// The table of one group of emulated runs.
pub(super) fn write_group(
    md: &mut String,
    g: &Group,
    labels: &[(String, Vec<&RunResult>)],
    reference: Option<&str>,
) {
    let (target, budget) = target_and_budget(g, labels);
    let _ = writeln!(
        md,
        "| run | seeds | final accuracy (%) | virtual time | time to {:.1}% | accuracy at {} (%) | bits sent / node |{}",
        100.0 * target,
        seconds(budget),
        if reference.is_some() {
            " time to target vs reference |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|{}",
        if reference.is_some() { "---|" } else { "" }
    );
    let mean_time_to = |runs: &[&RunResult]| -> (Option<f64>, f64, usize) {
        let reached: Vec<f64> = runs.iter().filter_map(|r| time_to(r, target)).collect();
        if reached.is_empty() {
            return (None, 0.0, 0);
        }
        let (m, s) = mean_std(&reached);
        (Some(m), s, reached.len())
    };
    let reference_time = reference
        .and_then(|name| labels.iter().find(|(l, _)| l == name))
        .and_then(|(_, runs)| mean_time_to(runs).0);
    for (label, runs) in labels {
        let acc: Vec<f64> = runs.iter().map(|r| 100.0 * r.accuracy).collect();
        let (am, asd) = mean_std(&acc);
        let end = mean_std(&runs.iter().map(|r| end_seconds(r)).collect::<Vec<_>>()).0;
        let at: Vec<f64> = runs
            .iter()
            .map(|r| 100.0 * accuracy_at(r, budget))
            .collect();
        let (bm, bsd) = mean_std(&at);
        let bits = RunResult::mean_bits_per_node(runs);
        let (tt, tsd, reached) = mean_time_to(runs);
        let tt_text = match tt {
            Some(t) if reached == runs.len() => format!("{} ± {}", seconds(t), seconds(tsd)),
            Some(t) => format!(
                "{} ± {} ({reached}/{} reached)",
                seconds(t),
                seconds(tsd),
                runs.len()
            ),
            None => "not reached".to_string(),
        };
        let _ = write!(
            md,
            "| {label} | {} | {am:.2} ± {asd:.2} | {} | {tt_text} | {bm:.2} ± {bsd:.2} | {} |",
            runs.len(),
            seconds(end),
            human_bits(bits),
        );
        if reference.is_some() {
            match (tt, reference_time) {
                (Some(t), Some(r)) if reached == runs.len() => {
                    let _ = write!(md, " {:.2}x |", t / r);
                }
                _ => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md.push('\n');
}

/// Test accuracy against virtual time and against bits sent, one line per label.
pub(super) fn plot_group(
    out: &Path,
    g: &Group,
    labels: &[(String, Vec<&RunResult>)],
) -> Result<Vec<String>, TrainError> {
    let title = g.title.clone().unwrap_or_else(|| g.name.clone());
    let time: Vec<_> = labels
        .iter()
        .map(|(l, runs)| seed_series(l, runs, |r, e| r.virtual_seconds[e]))
        .collect();
    let bits: Vec<_> = labels
        .iter()
        .map(|(l, runs)| seed_series(l, runs, |r, e| r.bits_per_node(r.curve[e].2)))
        .collect();
    accuracy_charts(
        out,
        &g.name,
        [
            (
                "virtual-time",
                format!("{title}: test accuracy by virtual time"),
                "virtual seconds on the emulated cluster",
                false,
                time,
            ),
            (
                "bits",
                format!("{title}: test accuracy by bits sent"),
                "bits sent per node",
                true,
                bits,
            ),
        ],
    )
}

/// `text` as section `name` of `existing`: between its markers, replacing what was there, or
/// appended.
pub(super) fn splice_section(existing: &str, name: &str, text: &str) -> String {
    let begin = format!("<!-- begin {name} -->");
    let end = format!("<!-- end {name} -->");
    let block = format!("{begin}\n{}\n{end}", text.trim_end());
    match (existing.find(&begin), existing.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{block}{}", &existing[..b], &existing[e + end.len()..])
        }
        _ if existing.trim().is_empty() => format!("{block}\n"),
        _ => format!("{}\n\n{block}\n", existing.trim_end()),
    }
}

/// The marked sections of `existing` (as [`splice_section`] writes them), to keep when the rest of
/// the file is rewritten.
pub(super) fn marked_sections(existing: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = existing;
    while let Some(b) = rest.find("<!-- begin ") {
        let after = &rest[b + "<!-- begin ".len()..];
        let Some(close) = after.find(" -->") else {
            break;
        };
        let name = &after[..close];
        let end = format!("<!-- end {name} -->");
        let Some(e) = rest[b..].find(&end) else { break };
        out.push(rest[b..b + e + end.len()].to_string());
        rest = &rest[b + e + end.len()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(points: &[(f64, f64)]) -> RunResult {
        RunResult {
            group: "g".into(),
            label: "l".into(),
            config: crate::config::TrainConfig::default(),
            accuracy: points.last().map_or(0.0, |p| p.1),
            node_accuracy: 0.0,
            bytes: 0,
            train_seconds: 0.0,
            curve: points
                .iter()
                .enumerate()
                .map(|(k, &(_, acc))| (k + 1, acc, 0, Vec::new()))
                .collect(),
            virtual_seconds: points.iter().map(|p| p.0).collect(),
            compute_wait: (0.0, 0.0),
            dir: std::path::PathBuf::new(),
        }
    }

    #[test]
    fn time_to_target_interpolates_and_accuracy_at_budget_takes_the_last_evaluation() {
        let run = run_with(&[(0.1, 0.4), (0.2, 0.6), (0.3, 0.7)]);
        assert!((time_to(&run, 0.5).unwrap() - 0.15).abs() < 1e-12);
        assert_eq!(time_to(&run, 0.3), Some(0.1));
        assert_eq!(time_to(&run, 0.8), None);
        assert_eq!(accuracy_at(&run, 0.25), 0.6);
        assert_eq!(accuracy_at(&run, 0.05), 0.4);
        assert_eq!(accuracy_at(&run, 9.0), 0.7);
    }

    #[test]
    fn sections_are_replaced_in_place_appended_when_new_and_kept_by_a_full_rewrite() {
        let once = splice_section("# Results\n\nintro\n", "cluster", "## Cluster\nv1\n");
        assert_eq!(
            once,
            "# Results\n\nintro\n\n<!-- begin cluster -->\n## Cluster\nv1\n<!-- end cluster -->\n"
        );
        let twice = splice_section(&once, "cluster", "## Cluster\nv2");
        assert!(twice.contains("v2") && !twice.contains("v1"), "{twice}");
        assert!(twice.starts_with("# Results\n\nintro\n\n<!-- begin cluster -->"));
        assert_eq!(
            marked_sections(&twice),
            vec!["<!-- begin cluster -->\n## Cluster\nv2\n<!-- end cluster -->".to_string()]
        );
        assert!(marked_sections("no sections").is_empty());
    }
}
