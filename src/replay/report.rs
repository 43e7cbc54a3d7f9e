//! `report`: one self-contained HTML file that shows a range of eversions as
//! a timeline (one column per eversion, one row per CL, Runs as bars) and,
//! per eversion, its input events, `ProjectLog` reasons, actions and the
//! field diff from the previous eversion. The page is the template
//! `report.html` (inline CSS and JS, no network: its Content-Security-Policy
//! forbids every fetch) with the data below embedded as JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::diff::diff;
use super::path::StatePath;
use super::{json_of, state_document, summarize, verify_with, Opened, ReplayError};
use crate::proto::ProjectState;
use crate::read::action_line;

/// The page; `/*REPORT-DATA*/` is replaced by the data.
const TEMPLATE: &str = include_str!("report.html");

/// Largest report written by default (bytes): above it a browser gets slow,
/// and the command asks for a narrower range.
pub const DEFAULT_MAX_REPORT_BYTES: usize = 20 * 1024 * 1024;

/// An input event's or action's JSON is kept whole up to this many bytes; a
/// longer one is cut (and says so), which keeps the report of a busy stream
/// small. `pm-replay blame`, `actions` and `prjmanager events` show it whole.
const MAX_ITEM_JSON_BYTES: usize = 1_000;

/// A changed value in a diff is kept whole up to this many bytes.
const MAX_CHANGE_JSON_BYTES: usize = 300;

/// What to report on.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// First eversion shown (default: 1).
    pub from: Option<i64>,
    /// Last eversion shown (default: the last).
    pub to: Option<i64>,
    /// A state path whose changes are highlighted (as `blame` finds them).
    pub path: Option<StatePath>,
    /// Refuse to write a report larger than this (bytes).
    pub max_bytes: usize,
    /// The source's name, for the header.
    pub source_name: String,
}

/// The data the page renders.
#[derive(Debug, Serialize)]
struct ReportData {
    project: String,
    source: String,
    tool: String,
    first_revision: u64,
    last_revision: u64,
    last_eversion: i64,
    verify: String,
    verify_ok: bool,
    path: Option<String>,
    eversions: Vec<EversionData>,
    cls: Vec<ClRow>,
    runs: Vec<RunBar>,
}

/// One eversion: its marker, its batch and what it did.
#[derive(Debug, Serialize)]
struct EversionData {
    eversion: i64,
    now: Value,
    revision: u64,
    inputs: Vec<Value>,
    reasons: Vec<String>,
    actions: Vec<Value>,
    changes: Vec<super::diff::Change>,
    trace: Vec<String>,
    /// Whether `path` changed at this eversion.
    blamed: bool,
}

/// One CL's status in every eversion shown: one letter each (see
/// [`status_letter`]).
#[derive(Debug, Serialize)]
struct ClRow {
    clid: i64,
    statuses: String,
}

/// An incomplete Run, from the first to the last eversion that shows it.
#[derive(Debug, Serialize)]
struct RunBar {
    id: String,
    mode: String,
    clids: Vec<i64>,
    /// Index (into `eversions`) of the first and last eversion showing it.
    first: usize,
    last: usize,
    /// Whether it had ended by the end of the range.
    ended: bool,
}

/// The CL's status in a state, as one letter: `r` in an incomplete Run, `p`
/// being purged, `d` its CQ vote being propagated to its deps, `c` in a
/// component, `t` tracked, `.` not tracked.
fn status_letters(state: &ProjectState) -> BTreeMap<i64, char> {
    let mut letters = BTreeMap::new();
    let Some(p) = &state.pstate else {
        return letters;
    };
    for pcl in &p.pcls {
        letters.insert(pcl.clid, 't');
    }
    for clid in p.components.iter().flat_map(|c| &c.clids) {
        letters.insert(*clid, 'c');
    }
    for t in &p.triggering_cl_deps {
        letters.insert(t.origin_clid, 'd');
    }
    for purging in &p.purging_cls {
        letters.insert(purging.clid, 'p');
    }
    for clid in p
        .components
        .iter()
        .flat_map(|c| &c.pruns)
        .flat_map(|r| &r.clids)
    {
        letters.insert(*clid, 'r');
    }
    letters
}

/// `value`, or if its JSON is longer than `max` bytes, the start of its JSON
/// as a string that says it was cut.
fn cut(value: Value, max: usize) -> Value {
    let text = value.to_string();
    if text.len() <= max {
        return value;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(format!(
        "{}… (cut: {} bytes in all)",
        &text[..end],
        text.len()
    ))
}

/// An input event for the page: revision, type and its JSON (cut if long).
fn input_json(input: super::InputSummary) -> Value {
    serde_json::json!({
        "revision": input.revision,
        "type": input.event_type,
        "data": cut(input.data, MAX_ITEM_JSON_BYTES),
    })
}

/// Builds the report of `opened` as one HTML page.
pub async fn report(opened: &Opened, options: &ReportOptions) -> Result<String, ReplayError> {
    let from = options.from.unwrap_or(1).max(1);
    let to = options.to.unwrap_or(i64::MAX);
    if from > to {
        return Err(ReplayError::BadInput(format!(
            "the range {from}..={to} is empty"
        )));
    }
    let mut shown = Vec::new();
    let mut rows: BTreeMap<i64, String> = BTreeMap::new();
    let mut runs: BTreeMap<String, RunBar> = BTreeMap::new();
    let mut previous_document: Option<Value> = None;
    let mut previous_blamed: Option<Value> = None;
    let mut first_revision = None;
    let mut last_revision = 0;
    // One fold: verify's checks and the report's data.
    let verified = verify_with(opened, |step| {
        let eversion = step.outcome.evaluation.eversion;
        if eversion < from - 1 || eversion > to {
            return Ok(());
        }
        let document = state_document(step.state)?;
        let blamed_value = options.path.as_ref().map(|p| p.evaluate(&document));
        if eversion == from - 1 {
            previous_document = Some(document);
            previous_blamed = blamed_value;
            return Ok(());
        }
        let index = shown.len();
        first_revision.get_or_insert(
            step.inputs
                .first()
                .map_or(step.outcome.revision, |e| e.revision),
        );
        last_revision = step.outcome.revision;
        let before = match previous_document.take() {
            Some(d) => d,
            None => state_document(&crate::domain::new_project(&opened.project))?,
        };
        let changes = diff(&before, &document)
            .into_iter()
            .map(|mut c| {
                c.before = c.before.map(|v| cut(v, MAX_CHANGE_JSON_BYTES));
                c.after = c.after.map(|v| cut(v, MAX_CHANGE_JSON_BYTES));
                c
            })
            .collect();
        let blamed = match (&blamed_value, &previous_blamed) {
            (Some(now), Some(before)) => now != before,
            (Some(now), None) => *now != Value::Null,
            _ => false,
        };
        let evaluation = &step.outcome.evaluation;
        let mut actions = Vec::new();
        for action in evaluation.wrapped_actions() {
            let line = action_line(&action)
                .map_err(|e| ReplayError::Failed(format!("cannot print an action: {e}")))?;
            let mut line = json_of("an action", &line)?;
            if let Some(data) = line.get_mut("data") {
                *data = cut(data.take(), MAX_ITEM_JSON_BYTES);
            }
            actions.push(line);
        }
        shown.push(EversionData {
            eversion,
            now: json_of("the marker's now", &step.outcome.marker.now)?,
            revision: step.outcome.revision,
            inputs: summarize(step.inputs).into_iter().map(input_json).collect(),
            reasons: evaluation
                .reasons
                .iter()
                .map(|r| r.as_str_name().to_string())
                .collect(),
            actions,
            changes,
            trace: evaluation.trace.clone(),
            blamed,
        });
        // Timeline rows: every CL tracked at some point of the range.
        let letters = status_letters(step.state);
        for (clid, letter) in &letters {
            rows.entry(*clid)
                .or_insert_with(|| ".".repeat(index))
                .push(*letter);
        }
        for (clid, row) in rows.iter_mut() {
            if !letters.contains_key(clid) {
                // Tracked earlier in the range, not now: gone.
                row.push('g');
            }
        }
        // Run bars: incomplete Runs of this eversion.
        let mut live = BTreeSet::new();
        let pruns = step
            .state
            .pstate
            .iter()
            .flat_map(|p| &p.components)
            .flat_map(|c| &c.pruns);
        for prun in pruns {
            live.insert(prun.id.clone());
            runs.entry(prun.id.clone())
                .or_insert_with(|| RunBar {
                    id: prun.id.clone(),
                    mode: prun.mode.clone(),
                    clids: prun.clids.clone(),
                    first: index,
                    last: index,
                    ended: false,
                })
                .last = index;
        }
        for run in runs.values_mut() {
            if !live.contains(&run.id) {
                run.ended = true;
            }
        }
        previous_document = Some(document);
        previous_blamed = blamed_value;
        Ok(())
    })
    .await?;
    let last_eversion = verified.eversions;
    if options.to.is_some_and(|to| to > last_eversion) || from > last_eversion {
        return Err(ReplayError::BadInput(format!(
            "the range {from}..={} is not within the stream's eversions 1..={last_eversion}",
            options.to.unwrap_or(last_eversion)
        )));
    }
    let to = to.min(last_eversion);
    let (verify_ok, verify_text) = match &verified.divergence {
        None => (
            true,
            format!("OK: all {last_eversion} eversions agree with their markers, stored logs and snapshots"),
        ),
        Some(d) if d.eversion < from || d.eversion > to => (
            false,
            format!(
                "DIVERGENCE outside the range, at eversion {} ({}); the range itself was not reached or agrees",
                d.eversion, d.what
            ),
        ),
        Some(d) => (
            false,
            format!("DIVERGENCE at eversion {}: {}", d.eversion, d.what),
        ),
    };
    let mut runs: Vec<RunBar> = runs.into_values().collect();
    runs.sort_by(|a, b| (a.first, &a.id).cmp(&(b.first, &b.id)));
    let data = ReportData {
        project: opened.project.clone(),
        source: options.source_name.clone(),
        tool: format!("pm-replay {}", env!("CARGO_PKG_VERSION")),
        first_revision: first_revision.unwrap_or(0),
        last_revision,
        last_eversion,
        verify: verify_text,
        verify_ok,
        path: options.path.as_ref().map(|p| p.to_string()),
        eversions: shown,
        cls: rows
            .into_iter()
            .map(|(clid, statuses)| ClRow { clid, statuses })
            .collect(),
        runs,
    };
    let json = serde_json::to_string(&data)
        .map_err(|e| ReplayError::Failed(format!("cannot print the report data: {e}")))?
        // Inside <script>, "</" would end the element.
        .replace("</", "<\\/");
    let html = TEMPLATE.replacen("/*REPORT-DATA*/", &json, 1);
    if html.len() > options.max_bytes {
        return Err(ReplayError::BadInput(format!(
            "the report of eversions {from}..={to} would be {} bytes, over the limit of {} \
             (a browser gets slow beyond it); narrow the range with --from/--to, \
             or raise --max-bytes",
            html.len(),
            options.max_bytes
        )));
    }
    Ok(html)
}
