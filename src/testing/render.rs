//! Stable text of the PM state and of actions, for snapshot tests.
//!
//! The text changes only when behaviour does: lists whose order carries no
//! meaning are sorted (components by their first CL), nothing is printed by
//! address, operation ids derived from other printed fields are left out,
//! times read relative to the scenario epoch ([`super::T0`]: `T0`,
//! `T0+5m`, `T0-1h`, `T0+53m20s`), enums read by name, and each item takes
//! one line where that stays readable.

use std::fmt::Write as _;

use crate::proto::Timestamp;

use super::T0;
use crate::domain::Evaluation;
use crate::proto::{
    action::Action, cl_error, dep, p_state, pcl, purge_reason, purging_cl, ClError, Component,
    CreateRun, Dep, Mode, PRun, PState, Pcl, PurgeCl, PurgeReason, PurgingCl, Trigger,
    TriggeringClDeps, Triggers,
};

/// An instant relative to `T0`: `T0`, `T0+5m`, `T0-1h30m`, `T0+1d2h3m4.5s`;
/// `-` for an unset timestamp.
pub fn time(t: &Timestamp) -> String {
    let delta = crate::domain::time::to_nanos(t) - i128::from(T0) * 1_000_000_000;
    if delta == 0 {
        return "T0".to_string();
    }
    let sign = if delta < 0 { '-' } else { '+' };
    let mut nanos = delta.unsigned_abs();
    let mut out = format!("T0{sign}");
    for (unit, size) in [("d", 86_400u128), ("h", 3_600), ("m", 60)] {
        let whole = nanos / (size * 1_000_000_000);
        if whole > 0 {
            let _ = write!(out, "{whole}{unit}");
            nanos -= whole * size * 1_000_000_000;
        }
    }
    if nanos > 0 {
        let seconds = nanos / 1_000_000_000;
        let fraction = nanos % 1_000_000_000;
        if fraction == 0 {
            let _ = write!(out, "{seconds}s");
        } else {
            let digits = format!("{fraction:09}");
            let _ = write!(out, "{seconds}.{}s", digits.trim_end_matches('0'));
        }
    }
    out
}

/// [`time`] of an optional timestamp (`-` if unset).
pub fn opt_time(t: Option<&Timestamp>) -> String {
    t.map_or_else(|| "-".to_string(), time)
}

/// A trigger: `FULL_RUN@T0 by user-2@example.com#2` (`#` the Gerrit
/// account id, when set), plus its additional
/// label and custom mode definition if any.
pub fn trigger(t: &Trigger) -> String {
    let mut out = format!("{}@{}", t.mode, opt_time(t.time.as_ref()));
    if !t.email.is_empty() {
        let _ = write!(out, " by {}", t.email);
    }
    if t.gerrit_account_id != 0 {
        let _ = write!(out, "#{}", t.gerrit_account_id);
    }
    if !t.additional_label.is_empty() {
        let _ = write!(out, " label={}", t.additional_label);
    }
    if let Some(m) = &t.mode_definition {
        let _ = write!(out, " mode_definition={}", mode(m));
    }
    out
}

/// A run mode definition: `NAME(cq=V LABEL=VALUE)`.
pub fn mode(m: &Mode) -> String {
    format!(
        "{}(cq={} {}={})",
        m.name, m.cq_label_value, m.triggering_label, m.triggering_value
    )
}

/// The triggers of a CL or a purge: `cq=[…] npr=[…]`.
pub fn triggers(t: &Triggers) -> String {
    let mut parts = Vec::new();
    if let Some(cq) = &t.cq_vote_trigger {
        parts.push(format!("cq=[{}]", trigger(cq)));
    }
    if let Some(npr) = &t.new_patchset_run_trigger {
        parts.push(format!("npr=[{}]", trigger(npr)));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(" ")
    }
}

/// A dep: `31:HARD`.
pub fn dep(d: &Dep) -> String {
    let kind = dep::DepKind::try_from(d.kind).map_or("?", |k| k.as_str_name());
    format!("{}:{kind}", d.clid)
}

fn deps(ds: &[Dep]) -> String {
    format!("[{}]", ds.iter().map(dep).collect::<Vec<_>>().join(", "))
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The outcome of a dependency vote that failed: `permission_denied=[32 by u@x]`.
pub fn trigger_deps(t: &cl_error::TriggerDeps) -> String {
    let mut parts = Vec::new();
    if !t.permission_denied.is_empty() {
        let denied: Vec<String> = t
            .permission_denied
            .iter()
            .map(|p| format!("{} by {}", p.clid, p.email))
            .collect();
        parts.push(format!("permission_denied={}", list(&denied)));
    }
    if !t.not_found.is_empty() {
        parts.push(format!("not_found={}", list(&t.not_found)));
    }
    if !t.internal_gerrit_error.is_empty() {
        parts.push(format!(
            "internal_gerrit_error={}",
            list(&t.internal_gerrit_error)
        ));
    }
    parts.join(" ")
}

/// A CL error by kind name with its details: `invalid_deps unwatched=[32:SOFT]`.
pub fn cl_error(e: &ClError) -> String {
    use cl_error::Kind;
    match &e.kind {
        None => "unspecified".to_string(),
        Some(Kind::OwnerLacksEmail(_)) => "owner_lacks_email".to_string(),
        Some(Kind::WatchedByManyConfigGroups(w)) => {
            format!("watched_by_many_config_groups {}", list(&w.config_groups))
        }
        Some(Kind::InvalidDeps(d)) => {
            let mut out = "invalid_deps".to_string();
            for (name, ds) in [
                ("unwatched", &d.unwatched),
                ("wrong_config_group", &d.wrong_config_group),
                ("single_full_deps", &d.single_full_deps),
                ("combinable_untriggered", &d.combinable_untriggered),
                ("combinable_mismatched_mode", &d.combinable_mismatched_mode),
            ] {
                if !ds.is_empty() {
                    let _ = write!(out, " {name}={}", deps(ds));
                }
            }
            if let Some(t) = &d.too_many {
                let _ = write!(out, " too_many={}/{}", t.actual, t.max_allowed);
            }
            out
        }
        Some(Kind::UnsupportedMode(m)) => format!("unsupported_mode {m:?}"),
        Some(Kind::SelfCqDepend(_)) => "self_cq_depend".to_string(),
        Some(Kind::CorruptGerritMetadata(m)) => format!("corrupt_gerrit_metadata {m:?}"),
        Some(Kind::ReusedTrigger(r)) => format!("reused_trigger run={}", r.run),
        Some(Kind::WatchedByManyProjects(w)) => {
            format!("watched_by_many_projects {}", list(&w.projects))
        }
        Some(Kind::CommitBlocked(_)) => "commit_blocked".to_string(),
        Some(Kind::TriggerDeps(t)) => format!("trigger_deps {}", trigger_deps(t)),
        Some(Kind::DepRunFailed(clid)) => format!("dep_run_failed {clid}"),
        Some(Kind::OwnerEmailMalformed(_)) => "owner_email_malformed".to_string(),
    }
}

/// What a purge reason applies to: `all` or the triggers.
fn reason_apply_to(a: Option<&purge_reason::ApplyTo>) -> String {
    match a {
        None => "nothing".to_string(),
        Some(purge_reason::ApplyTo::AllActiveTriggers(_)) => "all".to_string(),
        Some(purge_reason::ApplyTo::Triggers(t)) => triggers(t),
    }
}

/// A purge reason: `owner_lacks_email on all`.
pub fn purge_reason(r: &PurgeReason) -> String {
    let error = r
        .cl_error
        .as_ref()
        .map_or_else(|| "no error".to_string(), cl_error);
    format!("{error} on {}", reason_apply_to(r.apply_to.as_ref()))
}

fn purging_apply_to(a: Option<&purging_cl::ApplyTo>) -> String {
    match a {
        None => "nothing".to_string(),
        Some(purging_cl::ApplyTo::AllActiveTriggers(_)) => "all".to_string(),
        Some(purging_cl::ApplyTo::Triggers(t)) => triggers(t),
    }
}

/// A purge's notification: `default` (unset), `none` (set but empty) or the targets.
fn notification(n: Option<&purging_cl::Notification>) -> String {
    let whom = |ws: &[i32]| -> String {
        let names: Vec<&str> = ws
            .iter()
            .map(|&w| purging_cl::notification::Whom::try_from(w).map_or("?", |w| w.as_str_name()))
            .collect();
        list(&names)
    };
    match n {
        None => "default".to_string(),
        Some(n) if n.notify.is_empty() && n.attention.is_empty() => "none".to_string(),
        Some(n) => format!(
            "notify={} attention={}",
            whom(&n.notify),
            whom(&n.attention)
        ),
    }
}

/// A purge in flight or requested: `33 on all notify=default deadline=T0+10m`.
pub fn purging_cl(p: &PurgingCl) -> String {
    format!(
        "{} on {} notify={} deadline={}",
        p.clid,
        purging_apply_to(p.apply_to.as_ref()),
        notification(p.notification.as_ref()),
        opt_time(p.deadline.as_ref())
    )
}

/// A dependency vote: `origin=33 deps=[31, 32] trigger=[…] group=singular deadline=T0+8m`.
pub fn triggering_cl_deps(op: &TriggeringClDeps) -> String {
    format!(
        "origin={} deps={} trigger=[{}] group={} deadline={}",
        op.origin_clid,
        list(&op.dep_clids),
        op.trigger.as_ref().map_or_else(|| "-".to_string(), trigger),
        op.config_group_name,
        opt_time(op.deadline.as_ref())
    )
}

/// An incomplete Run: `v8/…-1-… FULL_RUN cls=[31]`.
pub fn prun(r: &PRun) -> String {
    let mut out = format!("{} {} cls={}", r.id, r.mode, list(&r.clids));
    if r.root_clid != 0 {
        let _ = write!(out, " root={}", r.root_clid);
    }
    out
}

fn group_names(indexes: &[i32], names: &[String]) -> String {
    let named: Vec<String> = indexes
        .iter()
        .map(|&i| {
            usize::try_from(i)
                .ok()
                .and_then(|i| names.get(i))
                .cloned()
                .unwrap_or_else(|| format!("#{i}"))
        })
        .collect();
    list(&named)
}

/// A PCL on one line, its purge reasons on the following indented lines.
pub fn pcl(p: &Pcl, group_names_of_state: &[String]) -> String {
    let status = pcl::Status::try_from(p.status).map_or("?", |s| s.as_str_name());
    let mut out = format!(
        "{} v{} {status} groups={}",
        p.clid,
        p.eversion,
        group_names(&p.config_group_indexes, group_names_of_state)
    );
    if !p.deps.is_empty() {
        let _ = write!(out, " deps={}", deps(&p.deps));
    }
    if let Some(t) = &p.triggers {
        let _ = write!(out, " {}", triggers(t));
    }
    for (flag, set) in [
        ("submitted", p.submitted),
        ("submittable", p.submittable),
        ("outdated", p.outdated.is_some()),
    ] {
        if set {
            let _ = write!(out, " {flag}");
        }
    }
    for r in &p.purge_reasons {
        let _ = write!(out, "\n    reason: {}", purge_reason(r));
    }
    // `errors` mirrors the purge reasons' errors; print it only if it does not.
    let mirrored: Vec<&ClError> = p
        .purge_reasons
        .iter()
        .filter_map(|r| r.cl_error.as_ref())
        .collect();
    if p.errors.iter().collect::<Vec<_>>() != mirrored {
        for e in &p.errors {
            let _ = write!(out, "\n    error (not a purge reason): {}", cl_error(e));
        }
    }
    out
}

/// A component on one line, its Runs on the following indented lines.
pub fn component(c: &Component) -> String {
    let mut out = list(&c.clids);
    if let Some(t) = &c.decision_time {
        let _ = write!(out, " decision={}", time(t));
    }
    if c.triage_required {
        out.push_str(" triage_required");
    }
    for r in &c.pruns {
        let _ = write!(out, "\n    run {}", prun(r));
    }
    out
}

/// The PM state, one item a line; components sorted by their first CL.
pub fn pstate(s: &PState) -> String {
    let mut out = String::new();
    let status = p_state::Status::try_from(s.status).map_or("?", |s| s.as_str_name());
    let _ = writeln!(
        out,
        "status={status} config={} groups={}",
        if s.config_hash.is_empty() {
            "-"
        } else {
            &s.config_hash
        },
        list(&s.config_group_names)
    );
    if let Some(t) = &s.next_eval_time {
        let _ = writeln!(out, "next_eval={}", time(t));
    }
    if s.repartition_required {
        out.push_str("repartition_required\n");
    }
    for p in &s.pcls {
        let _ = writeln!(out, "pcl {}", pcl(p, &s.config_group_names));
    }
    let mut components: Vec<&Component> = s.components.iter().collect();
    components.sort_by(|a, b| a.clids.cmp(&b.clids));
    for c in components {
        let _ = writeln!(out, "component {}", component(c));
    }
    for r in &s.created_pruns {
        let _ = writeln!(out, "created_run {}", prun(r));
    }
    for p in &s.purging_cls {
        let _ = writeln!(out, "purging {}", purging_cl(p));
    }
    for op in &s.triggering_cl_deps {
        let _ = writeln!(out, "triggering_deps {}", triggering_cl_deps(op));
    }
    out
}

/// A requested Run: its id, mode and group, then indented lines for the
/// identities, each input CL, and dep Runs, expected Runs, options and mode
/// definition when set. The operation id is left out: it derives from the
/// project and the Run id.
pub fn create_run(r: &CreateRun) -> String {
    let mut out = format!(
        "CreateRun {} {} group={} created={}",
        r.run_id,
        r.mode,
        r.config_group_id,
        opt_time(r.create_time.as_ref())
    );
    let _ = write!(
        out,
        "\n    owner={} created_by={} billed_to={}",
        r.owner, r.created_by, r.billed_to
    );
    for cl in &r.input_cls {
        let _ = write!(
            out,
            "\n    cl {} v{} trigger=[{}]",
            cl.clid,
            cl.expected_eversion,
            cl.trigger.as_ref().map_or_else(|| "-".to_string(), trigger)
        );
    }
    if !r.dep_runs.is_empty() {
        let _ = write!(out, "\n    dep_runs={}", list(&r.dep_runs));
    }
    if !r.expected_incomplete_run_ids.is_empty() {
        let _ = write!(
            out,
            "\n    expected_incomplete_runs={}",
            list(&r.expected_incomplete_run_ids)
        );
    }
    if let Some(o) = r.options.as_ref().filter(|o| **o != Default::default()) {
        let _ = write!(out, "\n    options={o:?}");
    }
    if let Some(m) = &r.mode_definition {
        let _ = write!(out, "\n    mode_definition={}", mode(m));
    }
    out
}

/// A purge request: the purge, its config groups, then one reason a line.
pub fn purge_cl(p: &PurgeCl) -> String {
    let mut out = format!(
        "PurgeCl {} groups={}",
        p.purging_cl
            .as_ref()
            .map_or_else(|| "-".to_string(), purging_cl),
        list(&p.config_groups)
    );
    for r in &p.purge_reasons {
        let _ = write!(out, "\n    reason: {}", purge_reason(r));
    }
    out
}

/// One action, on one line or a few indented ones.
pub fn action(a: &Action) -> String {
    match a {
        Action::CreateRun(r) => create_run(r),
        Action::PurgeCl(p) => purge_cl(p),
        Action::TriggerClDeps(t) => format!(
            "TriggerClDeps {}",
            t.triggering_cl_deps
                .as_ref()
                .map_or_else(|| "-".to_string(), triggering_cl_deps)
        ),
        Action::CancelRuns(c) => format!("CancelRuns {} reason={:?}", list(&c.run_ids), c.reason),
        Action::UpdateRunsConfig(u) => format!(
            "UpdateRunsConfig {} hash={} eversion={}",
            list(&u.run_ids),
            u.hash,
            u.eversion
        ),
        Action::PokeRuns(p) => format!("PokeRuns {}", list(&p.run_ids)),
        Action::PokePoller(_) => "PokePoller".to_string(),
    }
}

/// One evaluation: its header (number, time, eversion, log reasons), its
/// actions in order, its trace, and the saved state, indented.
pub fn evaluation(number: usize, now: &Timestamp, e: &Evaluation, s: &PState) -> String {
    let mut out = format!(
        "== evaluation {number} at {}: eversion {}",
        time(now),
        e.eversion
    );
    if !e.reasons.is_empty() {
        let reasons: Vec<&str> = e.reasons.iter().map(|r| r.as_str_name()).collect();
        let _ = write!(out, ", logged {}", list(&reasons));
    }
    out.push('\n');
    if e.actions.is_empty() {
        out.push_str("actions: none\n");
    } else {
        out.push_str("actions:\n");
        for a in &e.actions {
            for line in action(a).lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    if !e.trace.is_empty() {
        out.push_str("trace:\n");
        for line in &e.trace {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push_str("state:\n");
    for line in pstate(s).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_relative_to_t0() {
        let at = |seconds: i64, nanos: i32| {
            time(&Timestamp {
                seconds: T0 + seconds,
                nanos,
            })
        };
        assert_eq!(at(0, 0), "T0");
        assert_eq!(at(300, 0), "T0+5m");
        assert_eq!(at(-3600, 0), "T0-1h");
        assert_eq!(at(3200, 0), "T0+53m20s");
        assert_eq!(at(86_400 + 1, 500_000_000), "T0+1d1.5s");
        assert_eq!(at(-1, 0), "T0-1s");
        assert_eq!(opt_time(None), "-");
    }
}
