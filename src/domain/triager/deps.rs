//! Deps triage of one triggered CL (domain/luci-pm.md §7.4, the original's
//! `triagedDeps` in `deps.go`).
//!
//! Chained CQ votes are *not* gated on the `luci-cv-mce-dogfooders` group,
//! and a group with `allow_submit_with_open_deps` needs none: its HARD deps
//! are OK for a FULL_RUN (luci-pm-head.md R2).

use crate::domain::triage_api::{PmView, TriageError};
use crate::proto::cl_error::invalid_deps::TooMany;
use crate::proto::cl_error::{InvalidDeps, Kind};
use crate::proto::{dep::DepKind, pcl, ClError, ConfigGroup, Dep, Pcl, Trigger};

use super::{cq_trigger, FULL_RUN, MAX_ALLOWED_DEPS};
use crate::domain::time::{nanos_if_set, Nanos};

/// The deps of one CL, by category (categories are exclusive).
///
/// Non-submitted OK deps are not recorded, but they do count towards
/// `last_cq_vote_triggered` and the `too_many` limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TriagedDeps {
    /// Latest CQ-vote trigger time among *all* deps that have one.
    pub(crate) last_cq_vote_triggered: Option<Nanos>,
    /// Submitted deps watched by this project (in any config group): OK.
    pub(crate) submitted: Vec<Dep>,
    /// Positions in `pcl.deps` of the `submitted` deps, ascending.
    pub(crate) submitted_positions: Vec<usize>,
    /// Deps without a PCL or with an UNKNOWN one: OK, but block Run creation.
    pub(crate) not_yet_loaded: Vec<Dep>,
    /// HARD deps of a singular FULL_RUN CL that must get the CL's CQ vote.
    pub(crate) need_to_trigger: Vec<Dep>,
    /// The problems, if any; `None` means the deps are OK.
    pub(crate) invalid_deps: Option<InvalidDeps>,
}

impl TriagedDeps {
    /// Whether no dep is invalid (not-yet-loaded and need-to-trigger deps are OK).
    pub(crate) fn ok(&self) -> bool {
        self.invalid_deps.is_none()
    }

    /// The `invalid_deps` CLError to purge the CL's CQ trigger with.
    pub(crate) fn make_purge_reason(&self) -> Result<ClError, TriageError> {
        match &self.invalid_deps {
            Some(invalid) => Ok(ClError {
                kind: Some(Kind::InvalidDeps(invalid.clone())),
            }),
            None => Err(TriageError::Bug(
                "makePurgeReason must be called only iff !OK".to_string(),
            )),
        }
    }

    /// The deps of `pcl` that are not submitted, in dep order.
    ///
    /// Must be called with the PCL the deps were triaged from.
    pub(crate) fn not_submitted<'p>(&'p self, pcl: &'p Pcl) -> impl Iterator<Item = &'p Dep> + 'p {
        pcl.deps
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.submitted_positions.binary_search(i).is_err())
            .map(|(_, dep)| dep)
    }

    fn invalid(&mut self) -> &mut InvalidDeps {
        self.invalid_deps.get_or_insert_with(InvalidDeps::default)
    }
}

/// Triages the deps of `pcl`, a CL with a CQ trigger watched by group `cg_index`.
pub(crate) fn triage_deps(
    pcl: &Pcl,
    cg_index: i32,
    view: &PmView<'_>,
) -> Result<TriagedDeps, TriageError> {
    let cg = view.config_group(cg_index).ok_or_else(|| {
        TriageError::Bug(format!(
            "CL {}: config group index {cg_index} is out of range",
            pcl.clid
        ))
    })?;
    let mut res = TriagedDeps::default();
    for (position, dep) in pcl.deps.iter().enumerate() {
        let dep_pcl = view.pcl(dep.clid);
        res.categorize(pcl, cg_index, cg, dep_pcl, dep, position)?;
        if let Some(t) = dep_pcl
            .and_then(cq_trigger)
            .and_then(|t| nanos_if_set(t.time.as_ref()))
        {
            if res.last_cq_vote_triggered.map_or(true, |last| last < t) {
                res.last_cq_vote_triggered = Some(t);
            }
        }
    }
    let open_deps = pcl.deps.len() - res.submitted.len();
    // Only declare this invalid if every non-submitted dep is OK.
    if open_deps > MAX_ALLOWED_DEPS && res.invalid_deps.is_none() && res.not_yet_loaded.is_empty() {
        res.invalid().too_many = Some(TooMany {
            actual: i32::try_from(open_deps).unwrap_or(i32::MAX),
            max_allowed: MAX_ALLOWED_DEPS as i32,
        });
    }
    Ok(res)
}

impl TriagedDeps {
    fn categorize(
        &mut self,
        pcl: &Pcl,
        cg_index: i32,
        cg: &ConfigGroup,
        dep_pcl: Option<&Pcl>,
        dep: &Dep,
        position: usize,
    ) -> Result<(), TriageError> {
        let Some(dep_pcl) = dep_pcl else {
            self.not_yet_loaded.push(*dep);
            return Ok(());
        };
        match pcl::Status::try_from(dep_pcl.status) {
            Ok(pcl::Status::Unknown) => {
                self.not_yet_loaded.push(*dep);
                return Ok(());
            }
            Ok(pcl::Status::Unwatched | pcl::Status::Deleted) => {
                // A deleted PCL only happens around project re-enablement;
                // it is treated as unwatched, as the original does.
                self.invalid().unwatched.push(*dep);
                return Ok(());
            }
            Ok(pcl::Status::Ok) => {}
            Err(_) => {
                return Err(TriageError::Bug(format!(
                    "unrecognized CL {} dep {} status {}",
                    pcl.clid, dep_pcl.clid, dep_pcl.status
                )))
            }
        }
        if dep_pcl.submitted {
            // A submitted CL may have left the config group; referring to it
            // leaks nothing since it is in the same project.
            self.submitted.push(*dep);
            self.submitted_positions.push(position);
            return Ok(());
        }
        match dep_pcl.config_group_indexes.as_slice() {
            [] => {
                return Err(TriageError::Bug(format!(
                    "at least one ConfigGroup index required for watched dep PCL {}",
                    dep_pcl.clid
                )))
            }
            [only] if *only == cg_index => {}
            // A different group, or several groups (be strict, like CQDaemon).
            _ => {
                self.invalid().wrong_config_group.push(*dep);
                return Ok(());
            }
        }
        let tr = cq_trigger(pcl);
        let dtr = cq_trigger(dep_pcl);
        if cg.combine_cls.is_none() {
            self.categorize_single(tr, dtr, dep, cg.allow_submit_with_open_deps);
        } else {
            self.categorize_combinable(tr, dtr, dep);
        }
        Ok(())
    }

    fn categorize_combinable(&mut self, tr: Option<&Trigger>, dtr: Option<&Trigger>, dep: &Dep) {
        if mode_of(dtr) == mode_of(tr) {
            return;
        }
        match dtr {
            None => self.invalid().combinable_untriggered.push(*dep),
            Some(_) => self.invalid().combinable_mismatched_mode.push(*dep),
        }
    }

    fn categorize_single(
        &mut self,
        tr: Option<&Trigger>,
        dtr: Option<&Trigger>,
        dep: &Dep,
        allow_submit_with_open_deps: bool,
    ) {
        if mode_of(tr) != FULL_RUN {
            // Dry runs and other modes do not care about deps' triggers.
            return;
        }
        if dep.kind != DepKind::Hard as i32 {
            // A SOFT dep will not be submitted together with this CL.
            self.invalid().single_full_deps.push(*dep);
            return;
        }
        if allow_submit_with_open_deps {
            // The group lets CV submit the whole stack of HARD deps.
            return;
        }
        // A HARD dep without the same (FULL_RUN) vote gets it through a
        // chained CQ vote; the Run waits for it.
        if mode_of(tr) != mode_of(dtr) {
            self.need_to_trigger.push(*dep);
        }
    }
}

/// The mode of an optional trigger ("" if absent, like Go's getters).
pub(crate) fn mode_of(t: Option<&Trigger>) -> &str {
    t.map_or("", |t| t.mode.as_str())
}
